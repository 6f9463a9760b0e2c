"""The RADIO-style vision encoder: ``RadioEncoder`` (ViT + CPE + summary / register tokens + adaptors)."""

from vlm.encoder.adaptors import AdaptorHead, AdaptorMLP, TeacherSpec
from vlm.encoder.cpe import CroppedPositionEmbedding
from vlm.encoder.radio import MODEL_TYPE, EncoderInputError, ModelLoadError, RadioConfig, RadioEncoder, RadioOutput

__all__ = [
    "RadioEncoder", "RadioConfig", "RadioOutput", "TeacherSpec", "AdaptorHead", "AdaptorMLP",
    "CroppedPositionEmbedding", "EncoderInputError", "ModelLoadError", "MODEL_TYPE",
]
