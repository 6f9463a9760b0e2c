"""The RADIO-style agglomerative vision encoder (AM-RADIO / RADIOv2.5): a ViT with a cropped position
embedding, one summary (cls) token per teacher plus register tokens, and per-teacher adaptor heads.

Input: ``pixel_values`` ``(B, 1 | 3, H, W)`` in ``[0, 1]``, H and W multiples of the patch size (any
aspect); normalisation happens inside. Output: :class:`RadioOutput` with ``summary`` ``(B, T·C)``
(the teachers' cls tokens concatenated), ``features`` ``(B, N, C)`` (N = h·w patch tokens, row-major)
and, for the adaptors asked for, each teacher's ``(summary, features)``.

The transformer blocks are ``torch.nn.TransformerEncoderLayer`` (pre-norm, batch-first): the
attention is the library's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data.errors import M3Error
from vlm.model_config import ModelLoadError  # one error for every model folder that cannot be loaded
from vlm.encoder.adaptors import AdaptorHead, TeacherSpec
from vlm.encoder.cpe import CroppedPositionEmbedding

__all__ = ["RadioConfig", "RadioEncoder", "RadioOutput", "EncoderInputError", "ModelLoadError", "MODEL_TYPE"]

MODEL_TYPE = "m3_radio"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class EncoderInputError(M3Error, ValueError):
    """An image batch the encoder cannot take (wrong rank, channels, or size)."""


@dataclass
class RadioConfig:
    """Architecture of the encoder; saved as ``config.json`` beside the weights."""

    patch_size: int = 16
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_registers: int = 4
    max_resolution: int = 512  # CPE grid covers max_resolution / patch_size patches per side
    image_size: int = 224  # default training / serving resolution
    cpe_min_area: float = 0.1
    teachers: list[TeacherSpec] = field(default_factory=list)
    adaptor_hidden: int = 384
    adaptor_blocks: int = 1
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        self.teachers = [t if isinstance(t, TeacherSpec) else TeacherSpec(**t) for t in self.teachers]
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size must be divisible by num_heads, got {self.hidden_size} and {self.num_heads}.")
        if self.max_resolution % self.patch_size:
            raise ValueError(f"max_resolution must be a multiple of patch_size {self.patch_size}, got {self.max_resolution}.")

    @property
    def num_summary_tokens(self) -> int:
        return max(1, len(self.teachers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RadioOutput:
    """summary ``(B, T·C)``; features ``(B, N, C)`` or ``(B, C, h, w)``; grid ``(h, w)``;
    adaptors: teacher name → (summary ``(B, S_t)``, features ``(B, N, F_t)`` or ``(B, F_t, h, w)``)."""

    summary: torch.Tensor
    features: torch.Tensor
    grid: tuple[int, int]
    adaptors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class RadioEncoder(nn.Module):
    """ViT + CPE + summary / register tokens + adaptor heads; see the module docstring."""

    def __init__(self, config: RadioConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(3, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = CroppedPositionEmbedding(c.hidden_size, c.max_resolution // c.patch_size, c.cpe_min_area)
        self.summary_tokens = nn.Parameter(torch.randn(1, c.num_summary_tokens, c.hidden_size) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, c.num_registers, c.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.hidden_size, c.num_heads, int(c.hidden_size * c.mlp_ratio), dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.hidden_size)
        self.adaptors = nn.ModuleDict({t.name: AdaptorHead(t, c.hidden_size, c.adaptor_hidden, c.adaptor_blocks) for t in c.teachers})
        self.register_buffer("image_mean", torch.tensor(c.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(c.image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an ``height × width`` input."""
        p = self.config.patch_size
        return height // p, width // p

    def forward(self, pixel_values: torch.Tensor, adaptors: Iterable[str] | None = None, spatial: bool = False) -> RadioOutput:
        """Encode ``(B, 1|3, H, W)`` images in [0, 1]; ``adaptors`` names teachers whose heads to run
        (``None``: none); ``spatial=True`` returns features as ``(B, C, h, w)``."""
        tokens, (h, w) = self._encode(pixel_values)
        t = self.config.num_summary_tokens
        cls, feats = tokens[:, :t], tokens[:, t + self.config.num_registers:]  # (B, T, C), (B, N, C)
        out = RadioOutput(summary=cls.flatten(1), features=feats, grid=(h, w))
        for name in adaptors or ():
            if name not in self.adaptors:
                raise EncoderInputError(f"adaptor {name!r} is not in this encoder; it has {sorted(self.adaptors)}.")
            idx = [s.name for s in self.config.teachers].index(name)
            s, f = self.adaptors[name](cls[:, idx], feats)
            out.adaptors[name] = (s, _to_spatial(f, h, w) if spatial else f)
        if spatial:
            out.features = _to_spatial(feats, h, w)
        return out

    def forward_features(self, pixel_values: torch.Tensor, return_grid: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[int, int]]:
        """Patch features ``(B, N, C)`` for the VLM's projector (and the grid ``(h, w)`` if asked)."""
        tokens, grid = self._encode(pixel_values)
        feats = tokens[:, self.config.num_summary_tokens + self.config.num_registers:]
        return (feats, grid) if return_grid else feats

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self._normalise(pixel_values)
        x = self.patch_embed(x)  # (B, C, h, w)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed(b, h, w)  # (B, N, C)
        extra = torch.cat([self.summary_tokens, self.register_tokens], dim=1).expand(b, -1, -1)
        x = torch.cat([extra.to(x.dtype), x], dim=1)  # (B, T + R + N, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), (h, w)

    def _normalise(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] not in (1, 3):
            raise EncoderInputError(
                f"encoder input must be (B, 1 or 3, H, W) in [0, 1], got shape {tuple(pixel_values.shape)}; "
                "add a batch axis or drop the alpha channel."
            )
        p = self.config.patch_size
        if pixel_values.shape[-2] % p or pixel_values.shape[-1] % p:
            raise EncoderInputError(
                f"encoder input height and width must be multiples of the patch size {p}, "
                f"got {tuple(pixel_values.shape[-2:])}; resize or pad the image."
            )
        x = pixel_values.to(self.patch_embed.weight.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)

    # ---- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path`` (weights cast to
        ``dtype`` if given, e.g. ``torch.float16`` to halve the file); returns the folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "RadioEncoder":
        """Load a folder written by :meth:`save_pretrained`."""
        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise ModelLoadError(
                f"encoder folder {path} must hold {CONFIG_NAME} and {WEIGHTS_NAME}; found "
                f"{sorted(p.name for p in path.iterdir()) if path.is_dir() else 'no such folder'}. "
                "Point to a folder written by save_pretrained."
            )
        raw = json.loads(cfg_file.read_text())
        if raw.get("model_type") != MODEL_TYPE:
            raise ModelLoadError(f"{cfg_file}: model_type must be {MODEL_TYPE!r}, got {raw.get('model_type')!r}.")
        known = set(RadioConfig.__dataclass_fields__)
        model = cls(RadioConfig(**{k: v for k, v in raw.items() if k in known}))
        missing, unexpected = model.load_state_dict(load_file(str(weights), device=str(map_location)), strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{weights}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]}).")
        return model.eval()


def _to_spatial(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, h·w, C)`` → ``(B, C, h, w)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
