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


def test_lesion_hysteresis_drops_unsure_components_and_keeps_the_extent_of_sure_ones():
    from monai.data import MetaTensor

    from experts.ct_segmentation import keep_confident_lesions

    # input grid 1 mm, model grid 2 mm shifted by 1 mm: model voxel m sits on input voxel 2m + 1
    vol = Volume(array=np.zeros((40, 40, 40), dtype=np.float32), affine=np.eye(4), modality="CT")
    model_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    model_affine[:3, 3] = 1.0
    scores = torch.zeros(13, 20, 20, 20)
    scores[0] = 1.0  # background wins everywhere ...
    scores[10, 2:6, 2:6, 2:6] = 1.5  # ... but for a faint liver tumour (margin 0.5)
    scores[10, 12:16, 12:16, 12:16] = 1.5  # and a tumour whose centre is sure (margin 4)
    scores[10, 13:15, 13:15, 13:15] = 5.0
    labels = np.zeros((40, 40, 40), dtype=np.int16)
    labels[5:13, 5:13, 5:13] = 10
    labels[25:33, 25:33, 25:33] = 10
    labels[26, 26, 26] = 11  # a lung nodule voxel with no sure seed at all
    kept = labels.copy()
    dropped = keep_confident_lesions(kept, MetaTensor(scores, affine=torch.as_tensor(model_affine)), vol, margin=2.0)
    assert dropped == 2
    assert (kept[5:13, 5:13, 5:13] == 0).all() and kept[26, 26, 26] == 0
    sure = labels[25:33, 25:33, 25:33] == 10
    assert (kept[25:33, 25:33, 25:33][sure] == 10).all()  # the whole argmax extent, not only the sure core
    assert keep_confident_lesions(labels.copy(), MetaTensor(scores, affine=torch.as_tensor(model_affine)), vol, margin=0.4) == 1
