"""Chat backends the agent drives (``ChatBackend`` in ``vlm.backends.base``).

``load_backend(folder)`` picks the in-process one a local checkpoint needs: m3's own and VILA-layout
checkpoints (``config.json`` model_type ``m3_vlm`` / ``llava_llama``) → ``HFVLMBackend``; any other
``AutoModelForImageTextToText`` checkpoint → ``ImageTextBackend``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load_backend"]

_VLM_MODEL_TYPES = ("m3_vlm", "llava_llama")


def load_backend(path: str | Path, **kwargs: Any) -> Any:
    """The backend for the checkpoint folder ``path`` (weights load now, once)."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        from vlm.model import ModelLoadError

        raise ModelLoadError(f"model folder {path} must hold config.json; none found. Point --model at a checkpoint folder.")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type in _VLM_MODEL_TYPES:
        from vlm.backends.hf_vlm import HFVLMBackend

        return HFVLMBackend.from_pretrained(path, **kwargs)
    from vlm.backends.image_text import ImageTextBackend

    return ImageTextBackend.from_pretrained(path, **kwargs)
