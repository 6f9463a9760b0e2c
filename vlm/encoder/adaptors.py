"""Per-teacher adaptor heads (AM-RADIO): map the student's summary token and patch features into one
teacher's space, so ``encoder(x, adaptors=["seg"])`` answers in that teacher's feature space.

Each head is the RADIO MLP: ``fc → [LN → GELU → Linear] residual blocks → LN → GELU → Linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TeacherSpec", "AdaptorMLP", "AdaptorHead"]


@dataclass
class TeacherSpec:
    """One teacher the encoder is distilled from: its name and the widths of its summary and features."""

    name: str
    summary_dim: int
    feature_dim: int


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AdaptorMLP(nn.Module):
    """``(..., in_dim)`` → ``(..., out_dim)`` through ``num_blocks`` residual blocks of width ``hidden``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_blocks: int = 1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden) for _ in range(num_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.fc(x)))


class AdaptorHead(nn.Module):
    """A teacher's pair of MLPs: ``summary`` (B, C) → (B, summary_dim), ``features`` (B, N, C) → (B, N, feature_dim)."""

    def __init__(self, spec: TeacherSpec, width: int, hidden: int, num_blocks: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.summary = AdaptorMLP(width, hidden, spec.summary_dim, num_blocks)
        self.features = AdaptorMLP(width, hidden, spec.feature_dim, num_blocks)

    def forward(self, summary: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.summary(summary), self.features(features)
