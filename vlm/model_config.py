"""How the parts of an m3 VLM are joined: ``M3Config`` (saved as a checkpoint's ``config.json``), the image
placeholder, and the loading error. Kept apart from the model (``vlm.model``) so the VILA config mapping
(``vlm.vila``) reads it without importing the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from data.errors import M3Error

__all__ = ["M3Config", "ModelLoadError", "IMAGE_TOKEN", "VILA_IMAGE_TOKEN_INDEX", "MODEL_TYPE"]

IMAGE_TOKEN = "<image>"
VILA_IMAGE_TOKEN_INDEX = -200  # VILA's placeholder id: never a real token, replaced before embedding
MODEL_TYPE = "m3_vlm"


class ModelLoadError(M3Error, ValueError):
    """A model folder that cannot be loaded; the message names the missing or wrong part."""


@dataclass
class M3Config:
    """How the parts are joined. Saved as the checkpoint's ``config.json``.

    chat_format: ``m3`` (the tokenizer's own chat template), ``llama_3`` or ``vicuna_v1`` (VILA's).
    image_token_index: id of the image placeholder in prompts (``None``: the tokenizer's ``<image>``).
    """

    projector_type: str = "mlp_downsample"
    projector_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"budget": 196} for token_merge
    vision_select_layer: int = -2
    vision_select_feature: str = "cls_patch"
    image_aspect_ratio: str = "resize"  # resize | pad
    chat_format: str = "m3"
    image_token: str = IMAGE_TOKEN
    image_token_index: int | None = None
    system_prompt: str = ""  # default system prompt; empty = the agent's / template's own
    source_format: str = MODEL_TYPE  # m3_vlm | llava_llama (a published VILA checkpoint)
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, "architectures": ["M3ForConditionalGeneration"], **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "M3Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
