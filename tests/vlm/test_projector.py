"""mlp_downsample exactly as VILA: padding, token order, parameter names; the projector registry."""

from __future__ import annotations

import pytest
import torch

from vlm.projector import DownSample2x2, MLPDownsampleProjector, ProjectorError, build_projector, projector_names


def test_downsample_order_odd_grid_pads_bottom_right_and_is_column_pair_major():
    # 3×3 grid of scalar tokens numbered 1..9 in raster order (row-major), C = 1
    x = torch.arange(1, 10, dtype=torch.float32).view(1, 9, 1)
    out = DownSample2x2()(x)  # padded to 4×4 → 2×2 merged tokens of width 4
    assert out.shape == (1, 4, 4)
    # grid rows: [1 2 3], [4 5 6], [7 8 9], zero row/column appended
    expected = torch.tensor([
        [1, 2, 4, 5],  # column pair 0, row pair 0: TL TR BL BR
        [7, 8, 0, 0],  # column pair 0, row pair 1 (bottom padding)
        [3, 0, 6, 0],  # column pair 1, row pair 0 (right padding)
        [9, 0, 0, 0],
    ], dtype=torch.float32)
    assert torch.equal(out[0], expected)


def test_downsample_keeps_channels_together_per_token():
    x = torch.randn(2, 16, 3)  # 4×4 grid
    out = DownSample2x2()(x)
    grid = x.view(2, 4, 4, 3)
    # merged token 1 = column pair 0, row pair 1 → rows 2,3 cols 0,1
    assert torch.equal(out[:, 1], torch.cat([grid[:, 2, 0], grid[:, 2, 1], grid[:, 3, 0], grid[:, 3, 1]], dim=-1))


def test_mlp_downsample_shapes_and_vila_key_names():
    proj = MLPDownsampleProjector(32, 64)
    assert sorted(proj.state_dict()) == ["layers.1.bias", "layers.1.weight", "layers.2.bias", "layers.2.weight",
                                         "layers.4.bias", "layers.4.weight"]
    assert proj(torch.randn(2, 729, 32)).shape == (2, 196, 64)  # SigLIP 384/14: 27×27 → 14×14


def test_non_square_grid_is_refused():
    with pytest.raises(ProjectorError, match="square"):
        DownSample2x2()(torch.randn(1, 10, 4))


def test_registry_builds_token_merge_and_names_unknown():
    assert {"mlp_downsample", "linear", "token_merge"} <= set(projector_names())
    tm = build_projector("token_merge", 32, 64, budget=5)
    assert tm(torch.randn(1, 25, 32)).shape == (1, 5, 64)
    with pytest.raises(ProjectorError, match="must be one of"):
        build_projector("qformer", 32, 64)
