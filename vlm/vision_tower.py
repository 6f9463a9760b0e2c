"""The vision tower: a Hugging Face SigLIP / CLIP vision model, or the project's RADIO-style encoder.

Either way ``VisionTower(pixel_values)`` returns patch features ``(B, N, C)``; for Hugging Face towers
these are the hidden state of layer ``select_layer`` (VILA: ``-2``, before the final LayerNorm), all
tokens (``cls_patch``) or without the CLS token (``patch``). Images are prepared as VILA 1.5 does:
PIL bicubic resize to the tower's size (after padding to a square with the mean colour for ``pad``),
scaled to [0, 1], normalised with the tower's mean and std.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from data.errors import M3Error

__all__ = ["VisionTower", "VisionTowerError", "HF_VISION_TOWERS"]

# vision_tower/config.json model_type → transformers class name
HF_VISION_TOWERS: dict[str, str] = {
    "siglip_vision_model": "SiglipVisionModel",
    "siglip2_vision_model": "Siglip2VisionModel",
    "clip_vision_model": "CLIPVisionModel",
}
_CLS_TOWERS = {"clip_vision_model"}  # towers whose first token is a CLS token
_DEFAULT_MEAN_STD = {"clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


class VisionTowerError(M3Error, ValueError):
    """A vision tower folder the model cannot load."""


class VisionTower(nn.Module):
    """Wraps a vision model so it maps ``(B, 3, S, S)`` normalised pixels to ``(B, N, C)`` features."""

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        image_size: int,
        hidden_size: int,
        image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
        select_layer: int = -2,
        select_feature: str = "cls_patch",
    ) -> None:
        super().__init__()
        if select_feature not in ("cls_patch", "patch"):
            raise VisionTowerError(f"select_feature must be 'cls_patch' or 'patch', got {select_feature!r}.")
        self.model = model
        self.kind = kind  # the model_type of vision_tower/config.json
        self.image_size = int(image_size)
        self.hidden_size = int(hidden_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.select_layer = int(select_layer)
        self.select_feature = select_feature

    @property
    def is_hf(self) -> bool:
        return self.kind in HF_VISION_TOWERS

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, N, C)`` patch features."""
        pixel_values = pixel_values.to(dtype=next(self.model.parameters()).dtype)
        if self.is_hf:
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
            feats = out.hidden_states[self.select_layer]
            if self.select_feature == "patch" and self.kind in _CLS_TOWERS:
                feats = feats[:, 1:]
            return feats
        if hasattr(self.model, "forward_features"):
            return self.model.forward_features(pixel_values)
        out = self.model(pixel_values)
        feats = getattr(out, "features", out)
        if isinstance(feats, (tuple, list)):  # (summary, features) convention of RADIO-style encoders
            feats = feats[-1]
        if feats.ndim != 3:
            raise VisionTowerError(f"the {self.kind} encoder must return patch features (B, N, C), got shape {tuple(feats.shape)}.")
        return feats

    def preprocess(self, images: list[np.ndarray], aspect_ratio: str = "resize") -> torch.Tensor:
        """Pictures (``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8) → ``(B, 3, S, S)`` float32 pixels."""
        if aspect_ratio not in ("resize", "pad"):
            raise VisionTowerError(f"image_aspect_ratio must be 'resize' or 'pad', got {aspect_ratio!r}.")
        out = []
        for array in images:
            img = Image.fromarray(_as_uint8_rgb(array))
            if aspect_ratio == "pad":
                img = _expand_to_square(img, tuple(int(m * 255) for m in self.image_mean))
            img = img.resize((self.image_size, self.image_size), resample=Image.BICUBIC)
            x = np.asarray(img, dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
            out.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))
        return torch.stack(out)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, select_layer: int = -2, select_feature: str | None = None, dtype: torch.dtype | None = None
    ) -> "VisionTower":
        """Load ``vision_tower/``: the kind comes from its ``config.json`` ``model_type``."""
        path = Path(path)
        config = _read_json(path / "config.json", "vision tower")
        kind = config.get("model_type", "")
        pre = _read_json(path / "preprocessor_config.json", "vision tower", required=False)
        if kind in HF_VISION_TOWERS:
            import transformers

            model = getattr(transformers, HF_VISION_TOWERS[kind]).from_pretrained(path, dtype=dtype or torch.float32)
            vcfg = model.config
            mean, std = _DEFAULT_MEAN_STD.get(kind, ((0.5,) * 3, (0.5,) * 3))
            size = _processor_size(pre) or vcfg.image_size
            feature = select_feature or ("patch" if kind in _CLS_TOWERS else "cls_patch")
            return cls(
                model.eval(), kind=kind, image_size=size, hidden_size=vcfg.hidden_size,
                image_mean=tuple(pre.get("image_mean", mean)), image_std=tuple(pre.get("image_std", std)),
                select_layer=select_layer, select_feature=feature,
            )
        return cls._from_encoder(path, config, pre, kind, dtype)

    @classmethod
    def _from_encoder(cls, path: Path, config: dict, pre: dict, kind: str, dtype: torch.dtype | None) -> "VisionTower":
        """The project's RADIO-style encoder, imported only when a checkpoint needs it."""
        if importlib.util.find_spec("vlm.encoder") is None:
            raise VisionTowerError(f"vision tower of type {kind!r} needs vlm.encoder, which is not installed.")
        encoder_pkg = importlib.import_module("vlm.encoder")
        names = list(config.get("architectures") or []) + ["RadioEncoder", "RADIOEncoder", "VisionEncoder"]
        encoder_cls = next((getattr(encoder_pkg, n) for n in names if hasattr(encoder_pkg, n)), None)
        if encoder_cls is None:
            raise VisionTowerError(
                f"vision tower type must be one of {sorted(HF_VISION_TOWERS)} or a vlm.encoder class, "
                f"got model_type {kind!r} with architectures {config.get('architectures')}; "
                "re-save the tower with save_pretrained."
            )
        model = encoder_cls.from_pretrained(path)
        if dtype is not None:
            model = model.to(dtype)
        ecfg = getattr(model, "config", None)
        size = _processor_size(pre) or config.get("image_size") or getattr(ecfg, "image_size", 224)
        hidden = config.get("hidden_size") or config.get("embed_dim") or getattr(ecfg, "hidden_size", None)
        if hidden is None:
            raise VisionTowerError(f"encoder config {path / 'config.json'} must give hidden_size; found none.")
        # the encoder normalises inside (input in [0, 1]) unless a preprocessor_config.json says otherwise
        mean = pre.get("image_mean") or (0.0, 0.0, 0.0)
        std = pre.get("image_std") or (1.0, 1.0, 1.0)
        return cls(model.eval(), kind=kind or encoder_cls.__name__, image_size=int(size), hidden_size=int(hidden),
                   image_mean=tuple(mean), image_std=tuple(std), select_feature="cls_patch")

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tower (its own ``save_pretrained``) and a ``preprocessor_config.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        if self.is_hf:
            _prefix_keys(path, "vision_model.")
        processor = {
            "image_processor_type": "SiglipImageProcessor" if "siglip" in self.kind else "CLIPImageProcessor",
            "do_resize": True, "size": {"height": self.image_size, "width": self.image_size}, "resample": 3,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
        }
        (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def _prefix_keys(path: Path, prefix: str) -> None:
    """Store tower weights as ``vision_model.*`` (the key names of published SigLIP / CLIP / VILA
    checkpoints; transformers reads both spellings)."""
    from safetensors.torch import load_file, save_file

    for f in path.glob("*.safetensors"):
        state = load_file(str(f))
        if all(k.startswith(prefix) for k in state):
            continue
        save_file({(k if k.startswith(prefix) else prefix + k): v for k, v in state.items()}, str(f), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {(k if k.startswith(prefix) else prefix + k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def _as_uint8_rgb(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise VisionTowerError(f"images must be uint8 (H, W) or (H, W, 3) arrays, got dtype {a.dtype}; window the slice first.")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise VisionTowerError(f"images must be (H, W) or (H, W, 3), got shape {a.shape}.")
    return np.ascontiguousarray(a[:, :, :3])


def _expand_to_square(img: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _processor_size(pre: dict) -> int | None:
    size = pre.get("size")
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or 0) or None
    return int(size) if size else None


def _read_json(path: Path, what: str, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise VisionTowerError(f"{what} folder must hold {path.name}; none at {path}.")
        return {}
    return json.loads(path.read_text())
