"""Cropped position embedding (CPE, AM-RADIO): one learned position grid for the largest input, from
which every input's patch grid takes its embeddings.

Training: a random sub-window of the grid (area fraction uniform in ``[min_area, 1]``, aspect ratio
log-uniform in ``[3/4, 4/3]``), one per sample, bilinearly resampled to the input's patch grid — so the
model never ties a token to one absolute position and learns to work at many resolutions.
Evaluation: the whole grid resampled to the input's patch grid (any ``h × w``, non-square too),
cached per grid size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CroppedPositionEmbedding"]


class CroppedPositionEmbedding(nn.Module):
    """Learned ``(C, G, G)`` position grid; ``forward(B, h, w)`` → ``(B, h·w, C)`` embeddings.

    grid_size: G, the patch grid of the largest input (max_resolution / patch_size).
    min_area, aspect_range: the training crop distribution.
    """

    def __init__(self, dim: int, grid_size: int, min_area: float = 0.1, aspect_range: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__()
        if not 0 < min_area <= 1:
            raise ValueError(f"CPE min_area must be in (0, 1], got {min_area}.")
        self.grid = nn.Parameter(torch.randn(1, dim, grid_size, grid_size) * 0.02)
        self.min_area = min_area
        self.log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
        self._eval_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def forward(self, batch: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings ``(B, h·w, C)`` for a ``h × w`` patch grid (random crops in training)."""
        if self.training:
            theta = self._random_windows(batch, self.grid.device)
            grid = self.grid.expand(batch, -1, -1, -1)
            sample = F.affine_grid(theta, [batch, 1, h, w], align_corners=False)
            pos = F.grid_sample(grid, sample.to(grid.dtype), mode="bilinear", padding_mode="border", align_corners=False)
            return pos.flatten(2).transpose(1, 2)  # (B, h·w, C)
        if torch.is_grad_enabled() and self.grid.requires_grad:  # keep the graph: no cache
            return self._resized(h, w).expand(batch, -1, -1)
        key = (h, w, self.grid.dtype, self.grid.device)
        if key not in self._eval_cache:
            self._eval_cache[key] = self._resized(h, w).detach()
        return self._eval_cache[key].expand(batch, -1, -1)

    def _resized(self, h: int, w: int) -> torch.Tensor:
        """The whole grid resampled to ``h × w``: ``(1, h·w, C)``."""
        return F.interpolate(self.grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)

    def train(self, mode: bool = True) -> "CroppedPositionEmbedding":
        self._eval_cache.clear()  # weights may change while training
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - nn.Module hook signature
        self._eval_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _random_windows(self, batch: int, device: torch.device) -> torch.Tensor:
        """Affine maps ``(B, 2, 3)`` from the output grid to a random window of the [-1, 1]² grid."""
        area = torch.empty(batch, device=device).uniform_(self.min_area, 1.0)
        aspect = torch.exp(torch.empty(batch, device=device).uniform_(*self.log_aspect))
        sw = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the grid's width
        sh = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (torch.rand(batch, device=device) * 2 - 1) * (1 - sw)
        cy = (torch.rand(batch, device=device) * 2 - 1) * (1 - sh)
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = sw, cx
        theta[:, 1, 1], theta[:, 1, 2] = sh, cy
        return theta
