"""Token compression for the VLM (RADIOv2.5): ToMe-style bipartite merging of the encoder's patch
tokens down to a fixed budget, then the projector MLP — so a higher input resolution costs the
language model no more tokens. A projector option beside VILA's 2×2 ``mlp_downsample``.

Merging (ToMe, Bolya et al. 2023): split the tokens alternately into sets A and B, match every A token
to its most cosine-similar B token, and average the ``r`` best-matched A tokens into their partners
(size-weighted, so a merged token is the mean of all patches it covers); repeat until ``budget`` tokens
remain. Merged tokens keep the mean of their patches' raster positions and come out in that order,
so the language model still reads the image top-left to bottom-right.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["bipartite_merge", "TokenMergeProjector"]


def bipartite_merge(tokens: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``(B, N, C)`` tokens down to ``(B, min(N, budget), C)``.

    Returns the merged tokens (size-weighted means of the patches each covers) and their sizes
    ``(B, M)`` (patches per token; they sum to N).
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}.")
    b, n, c = tokens.shape
    x = tokens
    size = tokens.new_ones(b, n, 1)
    pos = torch.arange(n, device=tokens.device, dtype=tokens.dtype).view(1, n, 1).expand(b, n, 1)
    while x.shape[1] > budget:
        r = min(x.shape[1] - budget, x.shape[1] // 2)  # at most |A| tokens merge per round
        x, size, pos = _merge_round(x, size, pos, r)
    order = pos.squeeze(-1).argsort(dim=1)  # back to raster order of the mean positions
    gather = order.unsqueeze(-1)
    return x.gather(1, gather.expand(-1, -1, c)), size.gather(1, gather).squeeze(-1)


class TokenMergeProjector(nn.Module):
    """Vision tokens ``(B, N, in_dim)`` → ``(B, min(N, budget), hidden)``: bipartite merging, then
    ``LayerNorm → Linear(in_dim → hidden) → GELU → Linear(hidden → hidden)`` (the mlp_downsample MLP
    on merged instead of concatenated tokens)."""

    def __init__(self, in_dim: int, hidden: int, budget: int) -> None:
        super().__init__()
        if budget < 1:
            raise ValueError(f"token budget must be >= 1, got {budget}.")
        self.budget = budget
        self.mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3:
            raise ValueError(f"TokenMergeProjector expects (B, N, C) patch features, got shape {tuple(features.shape)}.")
        merged, _ = bipartite_merge(features, self.budget)
        return self.mlp(merged)


def _merge_round(x: torch.Tensor, size: torch.Tensor, pos: torch.Tensor, r: int) -> tuple[torch.Tensor, ...]:
    """One ToMe round removing ``r`` tokens (hand-written: no maintained library ships ToMe merging
    for arbitrary token tensors)."""
    b, _, c = x.shape
    a_x, b_x = x[:, ::2], x[:, 1::2]
    a_n = nn.functional.normalize(a_x, dim=-1)
    b_n = nn.functional.normalize(b_x, dim=-1)
    scores = a_n @ b_n.transpose(1, 2)  # (B, |A|, |B|) cosine similarity
    best, partner = scores.max(dim=-1)  # (B, |A|)
    ranked = best.argsort(dim=-1, descending=True)
    merged_idx, kept_idx = ranked[:, :r], ranked[:, r:]  # (B, r), (B, |A| − r)
    dst = partner.gather(1, merged_idx)  # (B, r) partner in B of each merged A token

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    a_size, b_size = size[:, ::2], size[:, 1::2]
    a_pos, b_pos = pos[:, ::2], pos[:, 1::2]
    m_size = take(a_size, merged_idx)
    # size-weighted sums into the B partners, then divide by the new sizes
    b_sum = (b_x * b_size).scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, c), take(a_x, merged_idx) * m_size)
    b_pos_sum = (b_pos * b_size).scatter_add(1, dst.unsqueeze(-1), take(a_pos, merged_idx) * m_size)
    b_new_size = b_size.scatter_add(1, dst.unsqueeze(-1), m_size)
    x = torch.cat([take(a_x, kept_idx), b_sum / b_new_size], dim=1)
    size = torch.cat([take(a_size, kept_idx), b_new_size], dim=1)
    pos = torch.cat([take(a_pos, kept_idx), b_pos_sum / b_new_size], dim=1)
    return x, size, pos
