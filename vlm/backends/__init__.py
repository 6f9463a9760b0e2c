"""Chat backends the agent drives (``ChatBackend`` in ``vlm.backends.base``).

``load_backend(folder)`` is the one loading function of ``m3 chat``, ``m3 ask``, ``m3 eval``, ``m3 serve``, ``m3 demo``
and ``m3 serve-lm``: a folder with a ``manifest.json`` (an ``m3 export`` build, the embedded default) is verified
against it first (``experts.manifest``); then m3's own and VILA-layout checkpoints (``config.json`` model_type
``m3_vlm`` / ``llava_llama``) → ``HFVLMBackend``; any other ``AutoModelForImageTextToText`` checkpoint →
``ImageTextBackend``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load_backend"]

_VLM_MODEL_TYPES = ("m3_vlm", "llava_llama")


def load_backend(path: str | Path, **kwargs: Any) -> Any:
    """The backend for the checkpoint folder ``path`` (weights load now, once). Raises
    ``experts.manifest.ManifestError`` when the folder does not match its manifest."""
    from experts.manifest import MANIFEST_FILENAME, verify_manifest

    path = Path(path)
    if (path / MANIFEST_FILENAME).is_file():
        verify_manifest(path)
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
