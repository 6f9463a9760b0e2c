"""The brain-tumour expert's intensity normalisation does not depend on whether the air is exactly zero or noise."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from experts.mri_brain_tumor import BrainTumorConfig, normalise_sequences


def _stack(air: str) -> MetaTensor:
    rng, air_rng = np.random.default_rng(1), np.random.default_rng(2)
    x, y, z = np.ogrid[-30:30, -30:30, -24:24]
    head = (x / 24.0) ** 2 + (y / 27.0) ** 2 + (z / 20.0) ** 2 <= 1.0
    chans = []
    for scale in (300.0, 2500.0):  # two sequences on very different intensity scales
        img = np.where(head, scale * (0.6 + 0.05 * rng.standard_normal(head.shape)), 0.0)
        if air == "noise":
            img = np.where(head, img, np.abs(0.02 * scale * air_rng.standard_normal(head.shape)))
        chans.append(img)
    return MetaTensor(torch.as_tensor(np.stack(chans), dtype=torch.float32), affine=torch.eye(4))


def test_zero_and_noisy_air_normalise_the_head_alike():
    zero, noisy = normalise_sequences(_stack("zero"), "head"), normalise_sequences(_stack("noise"), "head")
    head = np.asarray(_stack("zero")[0]) > 0
    gap = np.abs(np.asarray(zero) - np.asarray(noisy))[:, head]
    assert float(gap.mean()) < 0.05


def test_nonzero_normalisation_shifts_the_head_when_the_air_is_exactly_zero():
    """What the issue found: the old statistics are the head's alone when the air is zero, so tissue moves."""
    zero, noisy = normalise_sequences(_stack("zero"), "nonzero"), normalise_sequences(_stack("noise"), "nonzero")
    head = np.asarray(_stack("zero")[0]) > 0
    assert float(np.abs(np.asarray(zero) - np.asarray(noisy))[:, head].mean()) > 0.3


def test_an_unknown_normalisation_is_refused():
    import pytest

    with pytest.raises(ValueError, match="normalisation must be"):
        BrainTumorConfig(normalisation="percentile")
