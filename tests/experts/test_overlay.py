"""Overlay pictures: RGB uint8, mask colours where the mask is, a legend, radiological orientation."""

from __future__ import annotations

import numpy as np

from data.phantoms.geometry import axial_affine
from data.study import Volume
from experts.base import ExpertResult, Finding
from experts.overlay import label_colour, render_overlay


def _result(mask: np.ndarray, affine: np.ndarray) -> ExpertResult:
    return ExpertResult(expert="test", label_volume=Volume(mask, affine, modality="SEG"), label_names={1: "liver", 2: "spleen"})


def test_mask_is_coloured_on_the_patients_right_shown_on_the_image_left():
    affine = axial_affine((64, 64, 16), (3.0, 3.0, 5.0))  # i runs to the patient's left (RAS x decreases)
    image = np.full((64, 64, 16), -1000.0, dtype=np.float32)  # air: black in the soft-tissue window
    mask = np.zeros((64, 64, 16), dtype=np.int16)
    mask[4:12, 28:36, 8] = 1  # small i = patient's right
    rgb = render_overlay(Volume(image, affine, modality="CT"), _result(mask, affine))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 384
    colour = np.asarray(label_colour(1))
    tinted = np.abs(rgb.astype(int) - (0.45 * colour)).sum(axis=2) < 6  # black slice + 45 % liver colour
    cols = np.nonzero(tinted.any(axis=0))[0]
    assert len(cols) and cols.max() < 384 // 2  # left half of the picture (not in the legend)


def test_flipped_storage_gives_the_same_picture():
    affine = axial_affine((32, 32, 8), (3.0, 3.0, 5.0))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 32, 8)).astype(np.float32)
    mask = np.zeros((32, 32, 8), dtype=np.int16)
    mask[3:9, 10:20, 4] = 2
    flip = affine @ np.array([[-1, 0, 0, 31], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    a = render_overlay(Volume(image, affine, modality="CT"), _result(mask, affine))
    b = render_overlay(Volume(image[::-1].copy(), flip, modality="CT"), _result(mask[::-1].copy(), flip))
    assert np.array_equal(a, b)


def test_classifier_overlay_lists_findings_in_the_legend():
    dx = Volume(np.random.default_rng(1).uniform(0, 4095, (128, 128, 1)), np.eye(4), modality="DX")
    res = ExpertResult(expert="cxr", findings=[Finding("nodule", True, 0.91, 0.5), Finding("pneumothorax", False, 0.02, 0.5)])
    rgb = render_overlay(dx, res)
    legend = rgb[:, 384:]
    assert (np.abs(legend.astype(int) - np.array(label_colour(1))).sum(axis=2) == 0).any()  # the "yes" swatch
    assert (legend.min(axis=2) > 200).any()  # white legend text
