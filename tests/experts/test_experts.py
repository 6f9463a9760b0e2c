"""The three built-in experts with their committed weights, one small phantom each: masks on the
input grid, measurements close to the truth, targets, and clear refusals of bad input."""

from __future__ import annotations

import numpy as np
import pytest

import data.phantoms
from data.phantoms.labels import CT_LABELS, CXR_FINDINGS
from data.study import Volume
from experts.base import ExpertError, tool_message
from experts.registry import default_registry


@pytest.fixture(scope="module")
def reg():
    return default_registry()


@pytest.fixture(scope="module")
def ct_case():
    return data.phantoms.generate("ct", 30_001, lesion_rate=1.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def test_ct_everything_gives_organ_masks_and_volumes_close_to_truth(reg, ct_case):
    ct = ct_case.volumes["CT"]
    res = reg.run("ct_segmentation", ct)
    mask = res.label_volume.array
    assert mask.shape == ct.shape and np.allclose(res.label_volume.affine, ct.affine)
    for value in (1, 5, 6, 9):  # liver, both lungs, spine: big, unmistakable
        assert _dice(mask == value, ct_case.labels == value) > 0.85, CT_LABELS[value]
    liver_ml = next(m.value for m in res.measurements if m.structure == "liver" and m.quantity == "volume")
    assert liver_ml == pytest.approx(ct_case.truth["organ_volumes_ml"]["liver"], rel=0.10)
    assert "liver" in res.summary and '"expert": "ct_segmentation"' in tool_message(res)


@pytest.fixture(scope="module")
def small_ct_case():
    return data.phantoms.generate("ct", 30_007, shape=(96, 96, 48), lesion_rate=1.0, body_region="abdomen")


def test_ct_targets_restrict_the_mask_and_the_report(reg, small_ct_case):
    ct_case = small_ct_case
    res = reg.run("ct_segmentation", ct_case.volumes["CT"], targets="liver tumor")
    assert set(np.unique(res.label_volume.array)) <= {0, 10}
    sized = [m for m in res.measurements if m.quantity != "mean attenuation"]  # the phase's evidence comes with any target
    assert sized and all(m.structure == "liver tumor" for m in sized)
    assert [f.label for f in res.findings if f.label.endswith(" phase")] == [f"{ct_case.truth['phase']} phase"]
    from scipy import ndimage

    count = next(m.value for m in res.measurements if m.quantity == "count")
    assert count == ndimage.label(res.label_volume.array == 10, structure=np.ones((3, 3, 3)))[1]  # count = components of the mask
    assert count >= ct_case.truth["lesion_counts"]["liver tumor"] >= 1  # the tumour is found (the model still over-counts)
    both = reg.run("ct_segmentation", ct_case.volumes["CT"], targets=["spleen", "aorta"])
    assert set(both.label_names.values()) == {"spleen", "aorta"}
    with pytest.raises(ExpertError, match="targets"):
        reg.run("ct_segmentation", ct_case.volumes["CT"], targets="brain")


def test_ct_refuses_bad_input_with_actionable_messages(reg, ct_case):
    ct = ct_case.volumes["CT"]
    with pytest.raises(ExpertError, match="must be a CT image, got modality 'MR'"):
        reg.run("ct_segmentation", ct.like(ct.array, modality="MR"))
    nan = ct.array.astype(np.float32)
    nan[3, 3, 3] = np.nan
    with pytest.raises(ExpertError, match="1 NaN"):
        reg.run("ct_segmentation", ct.like(nan))
    with pytest.raises(ExpertError, match="too small|covers only"):
        reg.run("ct_segmentation", Volume(np.zeros((6, 6, 6)), np.eye(4), modality="CT"))
    with pytest.raises(ExpertError, match="2D image"):
        reg.run("ct_segmentation", Volume(np.zeros((64, 64, 1)), np.eye(4), modality="CT"))
    huge = Volume(np.broadcast_to(np.float32(0), (1100, 1100, 600)), np.eye(4), modality="CT")
    with pytest.raises(ExpertError, match="million voxels"):
        reg.run("ct_segmentation", huge)


def test_mri_segments_the_tumour_and_names_missing_sequences(reg):
    case = data.phantoms.generate("mri", 30_002, tumor=True)
    res = reg.run("mri_brain_tumor", case.volumes)
    assert _dice(res.label_volume.array > 0, case.labels > 0) > 0.75
    wt = next(m.value for m in res.measurements if m.structure == "whole tumor" and m.quantity == "volume")
    assert wt == pytest.approx(case.truth["whole_tumor_ml"], rel=0.3)
    assert f"{case.truth['hemisphere']} hemisphere" in res.summary
    three = {k: v for k, v in case.volumes.items() if k != "FLAIR"}
    with pytest.raises(ExpertError, match="missing MRI sequence FLAIR"):
        reg.run("mri_brain_tumor", three)
    with pytest.raises(ExpertError, match="four MRI sequences"):
        reg.run("mri_brain_tumor", case.volumes["T1"])


def test_mri_reports_no_tumour_in_a_tumour_free_brain(reg):
    case = data.phantoms.generate("mri", 20_023)  # a validation brain where the network marks a few mL of oedema alone
    assert not case.truth["tumor_present"]
    res = reg.run("mri_brain_tumor", case.volumes)
    assert not next(f.present for f in res.findings if f.label == "tumor")
    assert res.summary == "No brain tumour found." and not res.label_volume.array.any()


def test_mri_sequences_on_different_grids_are_resampled_onto_t1c(reg):
    case = data.phantoms.generate("mri", 30_003, tumor=True)
    flair = case.volumes["FLAIR"]
    coarse = flair.like(flair.array[::2, ::2, :].copy(), affine=flair.affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    res = reg.run("mri_brain_tumor", {**case.volumes, "FLAIR": coarse})
    assert res.label_volume.shape == case.volumes["T1c"].shape
    assert _dice(res.label_volume.array > 0, case.labels > 0) > 0.6


def test_cxr_gives_calibrated_yes_no_for_every_finding(reg):
    case = data.phantoms.generate("cxr", 30_004, findings=("cardiomegaly", "pleural effusion"), random_others=False)
    res = reg.run("cxr_classification", case.volumes["DX"])
    by = {f.label: f for f in res.findings}
    assert list(by) == list(CXR_FINDINGS)
    expert = reg.get("cxr_classification")
    for f in res.findings:
        assert 0.0 <= f.probability <= 1.0 and f.threshold == expert.thresholds[f.label]
        assert f.present == (f.probability >= f.threshold)
    assert by["pleural effusion"].present
    rgb = res.render_overlay(case.volumes["DX"])
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3


def test_cxr_refuses_ct_and_tiny_images(reg, ct_case):
    with pytest.raises(ExpertError, match="DX or CR"):
        reg.run("cxr_classification", ct_case.volumes["CT"])
    with pytest.raises(ExpertError, match="too small"):
        reg.run("cxr_classification", Volume(np.zeros((20, 20, 1)), np.eye(4), modality="DX"))


def test_contrast_phase_follows_the_aorta_and_liver_enhancement():
    from experts.measurements import contrast_phase, mean_attenuation

    assert contrast_phase(42.0, 58.0) == "non-contrast"
    assert contrast_phase(310.0, 80.0) == "arterial"
    assert contrast_phase(175.0, 110.0) == "portal venous"
    assert contrast_phase(260.0, 170.0) == "portal venous"  # a bright aorta with an enhanced liver is not arterial
    image = np.full((12, 12, 12), 40.0, np.float32)
    labels = np.zeros((12, 12, 12), np.int16)
    labels[2:10, 2:10, 2:10] = 8
    image[3:9, 3:9, 3:9] = 300.0  # the core; the one-voxel rim reads as the neighbour
    assert mean_attenuation(image, labels, 8) == pytest.approx(300.0)
    assert mean_attenuation(image, labels, 1) is None


def test_sliding_windows_stay_within_the_training_patch(reg):
    """A window taller than the training patch pads a short series with zeros above and below; the network,
    never trained on that, called the liver dome at the series' edge a tumour (held-out phantom 30016)."""
    from experts.model_files import load_expert_files

    ct, mri = (load_expert_files(name)[0] for name in ("ct_segmentation", "mri_brain_tumor"))
    assert ct["network"]["roi_size"][2] <= ct["training"]["recipe"]["patch"][2]
    # the brain grid is smaller than (96, 96, 96) on every axis
    assert all(w <= p for w, p in zip(mri["network"]["roi_size"], mri["training"]["recipe"]["patch"]))
    case = data.phantoms.generate("ct", 30_016)  # chest series ending in the liver dome, no liver tumour
    assert case.truth["lesion_counts"]["liver tumor"] == 0
    res = reg.run("ct_segmentation", case.volumes["CT"], targets="liver tumor")
    assert next(m.value for m in res.measurements if m.quantity == "count") == 0
