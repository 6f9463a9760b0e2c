"""Expert models the VLM calls as tools: the interface (``experts.base``), the registry
(``experts.registry.default_registry``), three built-in MONAI experts trained on phantom studies
(``ct_segmentation``, ``mri_brain_tumor``, ``cxr_classification``), adapters for published models
(``experts.adapters``), DICOM SEG and overlay outputs. ``experts`` imports only ``data``."""

from experts.base import Expert, ExpertError, ExpertResult, Finding, Measurement, tool_message

__all__ = ["Expert", "ExpertError", "ExpertResult", "Finding", "Measurement", "tool_message"]
