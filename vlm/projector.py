"""Vision → language projectors, and a registry so other projectors plug in by name.

``mlp_downsample`` is VILA 1.5's projector: neighbouring 2×2 patch tokens are concatenated (an odd grid
is first padded with a zero row at the bottom and a zero column at the right), then
``LayerNorm(4C) → Linear(4C→H) → GELU → Linear(H→H)``. Its parameters live under ``layers.1``
(LayerNorm), ``layers.2`` and ``layers.4`` (Linear), the key names of VILA's ``mm_projector`` folder.

Other projectors register with ``register_projector(name, factory)``; a factory takes
``(vision_hidden_size, llm_hidden_size, **options)`` and returns a module mapping ``(B, N, C)`` to
``(B, M, H)``. ``token_merge`` (``vlm.token_merge``, ToMe merging to a token budget) is one.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from data.errors import M3Error

__all__ = [
    "DownSample2x2",
    "MLPDownsampleProjector",
    "LinearProjector",
    "ProjectorError",
    "register_projector",
    "build_projector",
    "projector_names",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class ProjectorError(M3Error, ValueError):
    """A projector name or input shape the model cannot use."""


def register_projector(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Make ``factory(vision_hidden_size, llm_hidden_size, **options)`` available as projector ``name``."""
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise ProjectorError(f"a projector named {name!r} is already registered; pass replace=True to swap it.")
    _REGISTRY[name] = factory


def projector_names() -> list[str]:
    """Names accepted by ``build_projector``."""
    return sorted(_REGISTRY)


def build_projector(name: str, vision_hidden_size: int, llm_hidden_size: int, **options: Any) -> nn.Module:
    """A fresh projector ``name`` mapping ``(B, N, vision_hidden_size)`` to ``(B, M, llm_hidden_size)``;
    ``options`` are the projector's own settings (``budget`` for ``token_merge``)."""
    if name not in _REGISTRY:
        raise ProjectorError(
            f"projector type must be one of {projector_names()}, got {name!r}; "
            "register a new one with vlm.projector.register_projector."
        )
    return _REGISTRY[name](vision_hidden_size, llm_hidden_size, **options)


class DownSample2x2(nn.Module):
    """Merge each 2×2 block of a square token grid into one token of 4× the width.

    ``(B, N, C)`` with ``N = s²`` → ``(B, ⌈s/2⌉², 4C)``. Odd grids get a zero row at the bottom and a
    zero column at the right. Output order is column-pair-major (all row pairs of the first column pair,
    then the next), each token concatenating its block as top-left, top-right, bottom-left, bottom-right.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ProjectorError(f"mlp_downsample needs a square token grid, got {n} tokens; use a tower without a CLS token.")
        grid = x.reshape(b, side, side, c)  # (B, rows, cols, C)
        pad_r, pad_c = side % 2, side % 2
        if pad_r or pad_c:
            grid = nn.functional.pad(grid, (0, 0, 0, pad_c, 0, pad_r))  # zero column right, zero row bottom
        rows, cols = grid.shape[1], grid.shape[2]
        grid = grid.reshape(b, rows // 2, 2, cols // 2, 2, c)  # (B, r2, dr, c2, dc, C)
        grid = grid.permute(0, 3, 1, 2, 4, 5)  # (B, c2, r2, dr, dc, C): column-pair-major, block TL TR BL BR
        return grid.reshape(b, (cols // 2) * (rows // 2), 4 * c)


class MLPDownsampleProjector(nn.Module):
    """VILA's ``mlp_downsample``: 2×2 merge → LayerNorm(4C) → Linear → GELU → Linear.

    ``(B, N, C)`` → ``(B, ⌈√N/2⌉², H)``. Parameter names ``layers.1/2/4`` match VILA checkpoints.
    """

    def __init__(self, vision_hidden_size: int, llm_hidden_size: int) -> None:
        super().__init__()
        c4 = 4 * vision_hidden_size
        self.layers = nn.Sequential(
            DownSample2x2(),
            nn.LayerNorm(c4),
            nn.Linear(c4, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class LinearProjector(nn.Module):
    """One linear map per token (VILA's ``linear``): ``(B, N, C)`` → ``(B, N, H)``; key ``layers.0``."""

    def __init__(self, vision_hidden_size: int, llm_hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(vision_hidden_size, llm_hidden_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _token_merge(vision_hidden_size: int, llm_hidden_size: int, budget: int = 196) -> nn.Module:
    """ToMe-style merging to ``budget`` tokens, then the MLP (``vlm.token_merge``, imported on use)."""
    from vlm.token_merge import TokenMergeProjector

    return TokenMergeProjector(vision_hidden_size, llm_hidden_size, budget)


register_projector("mlp_downsample", MLPDownsampleProjector)
register_projector("linear", LinearProjector)
register_projector("token_merge", _token_merge)
