"""Results the experts should not be trusted on are marked "uncertain" with the reason; others read as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.study import Volume
from data.tool_text import format_tool_result
from experts.base import ExpertResult, Finding, Measurement, tool_message
from experts.plausibility import (brain_tumour_share_reasons, ct_nodule_density_reasons, ct_organ_volume_reasons, ct_phase_reasons,
                                  cxr_saturation_reasons)
from experts.preprocess import head_mask


def _grid(shape=(40, 40, 40), mm=5.0) -> Volume:
    return Volume(np.zeros(shape, dtype=np.int16), np.diag([mm, mm, mm, 1.0]), modality="CT")


def test_a_result_with_nothing_uncertain_has_the_tool_message_the_model_was_trained_on():
    r = ExpertResult(expert="cxr_classification", findings=[Finding("nodule", True, 0.81, 0.5)],
                     measurements=[Measurement("liver", "volume", 1500.0, "mL")], summary="Chest X-ray: nodule (0.81).")
    assert tool_message(r) == format_tool_result(r)
    assert "uncertain" not in r.to_json()


def test_an_uncertain_result_says_so_in_its_summary_and_tool_message():
    r = ExpertResult(expert="mri_brain_tumor", findings=[Finding("tumor", True)], summary="Brain tumour in the left hemisphere.")
    r.mark_uncertain(["whole tumour 520 mL more than a brain tumour plausibly is"])
    body = json.loads(tool_message(r))
    assert body["uncertain"] == ["whole tumour 520 mL more than a brain tumour plausibly is"]
    assert body["findings"] == {"tumor": "yes"}
    assert r.summary.endswith("Uncertain: whole tumour 520 mL more than a brain tumour plausibly is.")
    assert r.to_json()["uncertain"] == r.uncertain
    r.mark_uncertain(["whole tumour 520 mL more than a brain tumour plausibly is"])
    assert r.summary.count("Uncertain:") == 1, "the same reason is not added twice"


def test_an_organ_far_above_its_adult_volume_is_uncertain_but_a_normal_one_is_not():
    grid = _grid()  # 0.125 mL voxels
    labels = np.zeros(grid.shape, dtype=np.int16)
    labels[5:35, 5:35, 5:30] = 1  # 22,500 voxels = 2812 mL liver: within 1.5 x 2500
    assert ct_organ_volume_reasons(labels, {1: "liver"}, grid) == []
    labels[5:38, 5:38, 2:38] = 1  # 39,204 voxels = 4900 mL
    (reason,) = ct_organ_volume_reasons(labels, {1: "liver"}, grid)
    assert "liver volume 4900 mL is far above" in reason


def test_a_small_organ_cut_by_the_scan_edge_is_not_called_implausible():
    grid = _grid()
    labels = np.zeros(grid.shape, dtype=np.int16)
    labels[10:20, 10:20, 0:4] = 1  # 50 mL of liver at the first slice: the scan covers only its tip
    assert ct_organ_volume_reasons(labels, {1: "liver"}, grid) == []
    labels[:] = 0
    labels[10:20, 10:20, 10:14] = 1  # the same 50 mL fully inside the scan
    assert "far below" in ct_organ_volume_reasons(labels, {1: "liver"}, grid)[0]


def test_a_lung_nodule_of_fat_density_is_uncertain_a_soft_tissue_one_is_not():
    labels = np.zeros((30, 30, 30), dtype=np.int16)
    labels[5:9, 5:9, 5:9] = 11
    image = np.full(labels.shape, -850.0, dtype=np.float32)
    image[5:9, 5:9, 5:9] = 35.0
    assert ct_nodule_density_reasons(image, labels, 11) == []
    image[5:9, 5:9, 5:9] = -95.0
    (reason,) = ct_nodule_density_reasons(image, labels, 11)
    assert "fat density" in reason and "-95 HU" in reason
    image[5:9, 5:9, 5:7] = -850.0  # half the mask over aerated lung (partial volume), the core soft tissue
    image[5:9, 5:9, 7:9] = 30.0
    assert ct_nodule_density_reasons(image, labels, 11) == [], "a small true nodule blurred into the lung is not flagged"


def test_a_non_contrast_phase_from_an_unenhanced_aorta_beside_enhancing_kidneys_is_uncertain():
    assert ct_phase_reasons("non-contrast", 45.0, 35.0) == []
    assert ct_phase_reasons("portal venous", 170.0, 160.0) == []
    (reason,) = ct_phase_reasons("non-contrast", 45.0, 170.0)
    assert "aorta of 45 HU" in reason and "kidneys enhance (170 HU)" in reason


def test_a_tumour_taking_a_large_share_of_the_head_is_uncertain():
    assert brain_tumour_share_reasons(60.0, 2400.0) == []
    assert brain_tumour_share_reasons(589.0, 2400.0)
    assert brain_tumour_share_reasons(300.0, 1200.0), "a quarter of a skull-stripped brain"


def test_several_saturated_chest_findings_are_uncertain_one_is_not():
    assert cxr_saturation_reasons({"cardiomegaly": 0.99, "nodule": 0.2, "consolidation": 0.97}) == []
    (reason,) = cxr_saturation_reasons({"cardiomegaly": 0.99, "nodule": 0.98, "consolidation": 0.97, "pneumothorax": 0.1})
    assert "saturated on 3 findings" in reason


@pytest.mark.parametrize("air", ["zero", "noise"])
def test_the_head_mask_is_the_head_whether_the_air_is_exactly_zero_or_noise(air):
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[-32:32, -32:32, -32:32]
    head = (x / 24.0) ** 2 + (y / 28.0) ** 2 + (z / 24.0) ** 2 <= 1.0
    img = np.where(head, 600.0 + 50 * rng.standard_normal(head.shape), 0.0)
    img[(x / 8.0) ** 2 + (y / 8.0) ** 2 + (z / 8.0) ** 2 <= 1.0] = 0.0  # a dark ventricle inside stays in the head
    if air == "noise":
        img = np.where(head, img, np.abs(20.0 * rng.standard_normal(head.shape)))
    mask = head_mask(img)
    assert (mask ^ head).sum() < 0.02 * head.sum()
