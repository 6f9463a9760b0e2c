"""The connected-component clean-up and lesion measurements work inside each label's bounding box; they
must give what the same operations on the whole grid give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from data.study import Volume
from experts.measurements import drop_components_without, drop_detached_components, drop_small_components, keep_largest_component, lesion_stats
from experts.preprocess import channel_argmax

C26 = ndimage.generate_binary_structure(3, 3)


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((40, 36, 30), dtype=np.int16)
    lab[5:25, 4:20, 3:20] = 1  # an organ
    lab[30:34, 30:34, 25:28] = 1  # a stray island of it
    for _ in range(12):  # lesion blobs, some inside the organ, some far away, some one voxel
        c = rng.integers(0, [40, 36, 30])
        r = int(rng.integers(0, 3))
        lab[max(0, c[0] - r):c[0] + r + 1, max(0, c[1] - r):c[1] + r + 1, max(0, c[2] - r):c[2] + r + 1] = 2
    lab[0, 0, 0] = 2  # a lesion voxel at the corner: boxes must clip at the grid's edge
    return lab


def _reference_detached(lab, value, parents, gap):
    comps, n = ndimage.label(lab == value, structure=C26)
    out = lab.copy()
    for k in range(1, n + 1):
        near = ndimage.binary_dilation(comps == k, structure=C26, iterations=gap)
        if not np.isin(lab[near], parents).any():
            out[comps == k] = 0
    return out


@pytest.mark.parametrize("seed", range(5))
def test_clean_up_matches_whole_grid_reference(seed):
    lab = _labels(seed)
    for gap in (1, 2):
        got = lab.copy()
        drop_detached_components(got, 2, [1], gap)
        assert np.array_equal(got, _reference_detached(lab, 2, [1], gap))
    got = lab.copy()
    drop_small_components(got, 2, 5)
    comps, _ = ndimage.label(lab == 2, structure=C26)
    sizes = np.bincount(comps.ravel())
    want = lab.copy()
    want[(comps > 0) & (sizes[comps] < 5)] = 0
    assert np.array_equal(got, want)
    got = lab.copy()
    removed = keep_largest_component(got, 1)
    assert removed == int((lab[30:34, 30:34, 25:28] == 1).sum()) > 0 and not (got[30:34, 30:34, 25:28] == 1).any()
    assert int((got == 1).sum()) == int((lab[5:25, 4:20, 3:20] == 1).sum())


def test_lesion_stats_count_and_volume():
    lab = _labels(3)
    grid = Volume(np.zeros(lab.shape, dtype=np.float32), np.diag([2.0, 2.0, 3.0, 1.0]), "CT")
    s = lesion_stats(lab, 2, grid)
    _, n = ndimage.label(lab == 2, structure=C26)
    assert s.count == n and s.total_volume_ml == pytest.approx((lab == 2).sum() * 0.012)
    assert s.largest_diameter_mm > 0


def test_components_without_enough_core_are_dropped():
    whole = np.zeros((30, 30, 30), dtype=np.int16)
    whole[2:10, 2:10, 2:10] = 1  # oedema with a 2x2x2 core
    whole[15:25, 15:25, 15:25] = 1  # oedema alone
    whole[2:6, 20:24, 20:24] = 1  # oedema with a 1-voxel core
    core = np.zeros(whole.shape, dtype=bool)
    core[5:7, 5:7, 5:7] = True
    core[3, 21, 21] = True
    assert drop_components_without(whole, 1, core, 2) == 2
    assert whole[2:10, 2:10, 2:10].all() and not whole[15:25, 15:25, 15:25].any() and not whole[2:6, 20:24, 20:24].any()
    assert drop_components_without(np.zeros_like(whole), 1, core, 2) == 0


def test_channel_argmax_equals_torch_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 9, 8, 7), generator=g).float()  # many ties
    assert torch.equal(channel_argmax(scores), torch.argmax(scores, dim=0))
