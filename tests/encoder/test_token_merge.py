"""ToMe-style token merging: a fixed budget, size-weighted means, raster order kept."""

from __future__ import annotations

import pytest
import torch

from vlm.token_merge import TokenMergeProjector, bipartite_merge


def test_merges_to_budget_and_preserves_mass():
    torch.manual_seed(0)
    x = torch.randn(2, 196, 32)
    merged, size = bipartite_merge(x, 49)
    assert merged.shape == (2, 49, 32)
    assert torch.equal(size.sum(1), torch.full((2,), 196.0))
    # size-weighted means: the weighted sum of merged tokens equals the sum of all tokens
    assert torch.allclose((merged * size.unsqueeze(-1)).sum(1), x.sum(1), atol=1e-3)


def test_identical_tokens_merge_first_and_distinct_ones_survive():
    """Four distinct regions of repeated tokens collapse to their four values."""
    values = torch.eye(4) * 5
    x = values.repeat_interleave(16, dim=0)[None]  # (1, 64, 4): four runs of 16 equal tokens
    merged, size = bipartite_merge(x, 4)
    assert torch.allclose(merged[0], values, atol=1e-5)  # in raster order
    assert torch.equal(size[0], torch.full((4,), 16.0))


def test_projector_output_convention():
    proj = TokenMergeProjector(in_dim=32, hidden=48, budget=16)
    out = proj(torch.randn(3, 100, 32))
    assert out.shape == (3, 16, 48)
    assert proj(torch.randn(1, 10, 32)).shape == (1, 10, 48)  # fewer tokens than the budget pass through
    out.sum().backward()
    with pytest.raises(ValueError, match="budget"):
        TokenMergeProjector(32, 48, 0)
    with pytest.raises(ValueError, match="\\(B, N, C\\)"):
        proj(torch.randn(3, 32))
