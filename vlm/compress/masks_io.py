"""2:4 masks on disk: one bit per weight (``numpy.packbits``) in a safetensors file beside the weights.

A mask file holds, per layer, a uint8 tensor of packed bits and the layer's ``(out, in)`` shape in
the safetensors metadata (plus the method that made it), so a 4096×4096 layer costs 2 MiB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlm.compress.errors import CompressError
from vlm.compress.targets import check_two_four

__all__ = ["MASKS_FILENAME", "save_masks", "load_masks", "pack_mask", "unpack_mask"]

MASKS_FILENAME = "masks_2to4.safetensors"


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask (any shape) → uint8 tensor of its bits, 8 weights a byte (row-major, big-endian bits)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1)))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: uint8 bits → bool tensor of ``shape``."""
    count = int(np.prod(shape))
    bits = np.unpackbits(packed.cpu().numpy(), count=count).astype(bool)
    return torch.from_numpy(bits.reshape(shape))


def save_masks(masks: dict[str, torch.Tensor], path: str | Path, method: str = "") -> Path:
    """Write ``masks`` (bool ``(out, in)``, all 2:4) packed to ``path`` (a file, or a folder → ``masks_2to4.safetensors``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / MASKS_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        check_two_four(mask, name)
    tensors = {name: pack_mask(mask) for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    save_file(tensors, str(path), metadata={"format": "m3-2to4-packbits-v1", "shapes": json.dumps(shapes), "method": method})
    return path


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks`; every mask is checked to be 2:4."""
    path = Path(path)
    if path.is_dir():
        path = path / MASKS_FILENAME
    if not path.is_file():
        raise CompressError(f"Mask file {path} does not exist; run `m3 compress maskllm` or `m3 compress oneshot` first.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "m3-2to4-packbits-v1":
            raise CompressError(f"{path.name} is not an m3 2:4 mask file (format {meta.get('format')!r}); regenerate it.")
        shapes = json.loads(meta["shapes"])
        masks = {name: unpack_mask(f.get_tensor(name), tuple(shapes[name])) for name in f.keys()}
    for name, mask in masks.items():
        check_two_four(mask, name)
    return masks
