"""Phantom generators: determinism, ground truth equals the drawn labels, contrasts, variety, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from data.phantoms import PhantomCase, generate
from data.phantoms.labels import CT_LABELS, CXR_FINDINGS, MRI_LABELS, MRI_SEQUENCES

CT_NAME_TO_VALUE = {v: k for k, v in CT_LABELS.items()}


@pytest.fixture(scope="module")
def ct_cases() -> list[PhantomCase]:
    return [generate("ct", s) for s in range(50)]


@pytest.fixture(scope="module")
def mri_cases() -> list[PhantomCase]:
    return [generate("mri", s, shape=(96, 96, 48)) for s in range(16)]


@pytest.mark.parametrize("kind", ["ct", "mri", "cxr"])
def test_same_seed_same_case_other_seed_other_case(kind):
    a, b, c = generate(kind, 7), generate(kind, 7), generate(kind, 8)
    for name in a.volumes:
        np.testing.assert_array_equal(a.volumes[name].array, b.volumes[name].array)
        np.testing.assert_array_equal(a.volumes[name].affine, b.volumes[name].affine)
        assert a.volumes[name].array.shape != c.volumes[name].array.shape or not np.array_equal(a.volumes[name].array, c.volumes[name].array)
    assert a.truth == b.truth
    if a.labels is not None:
        np.testing.assert_array_equal(a.labels, b.labels)


def test_ct_truth_volumes_equal_label_map(ct_cases):
    for case in ct_cases[:20]:
        vml = case.volume.voxel_volume_ml
        counts = np.bincount(case.labels.ravel(), minlength=13)
        for name, ml in case.truth["organ_volumes_ml"].items():
            assert ml == pytest.approx(counts[CT_NAME_TO_VALUE[name]] * vml, abs=1e-3)
        for name, ml in case.truth["lesion_volumes_ml"].items():
            per_lesion = sum(les["volume_ml"] for les in case.truth["lesions"] if les["type"] == name)
            assert ml == pytest.approx(counts[CT_NAME_TO_VALUE[name]] * vml, abs=1e-3)
            assert per_lesion == pytest.approx(ml, abs=0.01)


def test_ct_lesions_lie_in_their_organ_and_counts_match_components(ct_cases):
    for case in ct_cases[:25]:
        for les in case.truth["lesions"]:
            organ = CT_NAME_TO_VALUE[les["organ"]]
            comps, _ = ndimage.label(case.labels == les["label"], structure=np.ones((3, 3, 3)))
            here = comps[tuple(les["centre_voxel"])]
            assert here > 0, "the lesion centre lies in the lesion"
            lesion = comps == here
            assert lesion.sum() * case.volume.voxel_volume_ml == pytest.approx(les["volume_ml"], abs=1e-3)
            rim = case.labels[ndimage.binary_dilation(lesion) & ~lesion]
            assert np.bincount(rim, minlength=13).argmax() == organ  # surrounded mostly by its organ
            assert les["max_diameter_mm"] > 0
        for name, n in case.truth["lesion_counts"].items():
            _, found = ndimage.label(case.labels == CT_NAME_TO_VALUE[name], structure=np.ones((3, 3, 3)))
            assert found == n, (case.seed, name)


def test_ct_varies_across_cases(ct_cases):
    totals = [sum(c.truth["lesion_counts"].values()) for c in ct_cases]
    assert len(set(totals)) >= 4 and 0 in totals
    for name in ("liver tumor", "lung nodule", "kidney cyst"):
        n = sum(c.truth["lesion_counts"][name] > 0 for c in ct_cases)
        assert 10 <= n <= 40, name
    assert {c.truth["phase"] for c in ct_cases} == {"non-contrast", "arterial", "portal venous"}
    assert {c.truth["body_region"] for c in ct_cases} == {"abdomen", "chest", "chest-abdomen"}
    liver = np.array([c.truth["organ_volumes_ml"]["liver"] for c in ct_cases])
    assert liver.std() / liver.mean() > 0.15
    assert len({tuple(c.truth["spacing_mm"]) for c in ct_cases}) == len(ct_cases)
    sizes = [les["max_diameter_mm"] for c in ct_cases for les in c.truth["lesions"]]
    assert min(sizes) < 15 and max(sizes) > 35


def _mean(case, value):
    return float(case.volume.array[case.labels == value].mean())


def test_ct_attenuation_follows_contrast_phase():
    by_phase = {p: generate("ct", 3, phase=p, body_region="chest-abdomen", noise_hu=5.0) for p in ("non-contrast", "arterial", "portal venous")}
    aorta = {p: _mean(c, 8) for p, c in by_phase.items()}
    assert aorta["non-contrast"] < 70 < 250 < aorta["arterial"] and 120 < aorta["portal venous"] < 250
    assert _mean(by_phase["portal venous"], 1) > _mean(by_phase["non-contrast"], 1) + 30
    for c in by_phase.values():
        assert _mean(c, 5) < -700 and _mean(c, 9) > 250
    cyst = next(c for c in (generate("ct", s, lesion_rate=1.0, phase="portal venous") for s in range(20)) if c.truth["lesion_counts"]["kidney cyst"])
    assert _mean(cyst, 12) < _mean(cyst, 3) - 80  # cysts stay near water while kidneys enhance


def test_ct_default_case_is_fast_and_shape_option_works():
    generate("ct", 0)
    t0 = time.perf_counter()
    for s in range(3):
        generate("ct", s)
    assert (time.perf_counter() - t0) / 3 < 1.0
    case = generate("ct", 1, shape=(96, 80, 40), spacing=(2.0, 2.0, 5.0))
    assert case.volume.shape == (96, 80, 40) and case.labels.shape == (96, 80, 40)
    assert case.volume.spacing == pytest.approx((2.0, 2.0, 5.0))
    assert case.volume.array.dtype == np.int16 and case.labels.dtype == np.int16


def test_mri_sequences_show_their_contrasts(mri_cases):
    case = next(c for c in mri_cases if c.truth["necrosis"] and c.truth["enhancing"])
    assert set(case.volumes) == set(MRI_SEQUENCES)
    assert all(v.sequence == n and v.modality == "MR" for n, v in case.volumes.items())
    wm = case.labels == 0  # compare against brain outside the tumour via the T1 bright white matter
    t1 = case.volumes["T1"].array
    wm &= t1 > np.percentile(t1[t1 > 100], 60)

    def rel(seq, value):
        a = case.volumes[seq].array
        return float(a[case.labels == value].mean()) / float(a[wm].mean())

    assert rel("T1c", 3) > 1.15 and rel("T1", 3) < 0.85  # enhancing rim lights up after contrast
    assert rel("FLAIR", 2) > 1.5 and rel("T2", 2) > 1.5  # oedema bright on FLAIR and T2
    assert rel("T1", 1) < 0.5 and rel("T2", 1) > 1.8  # necrosis dark on T1, bright on T2


def test_mri_truth_and_variety(mri_cases):
    present = [c for c in mri_cases if c.truth["tumor_present"]]
    assert 0.5 <= len(present) / len(mri_cases) < 1.0
    assert {c.truth["hemisphere"] for c in present} == {"left", "right"}
    for case in mri_cases:
        vml = case.volume.voxel_volume_ml
        counts = np.bincount(case.labels.ravel(), minlength=4)
        for value, name in MRI_LABELS.items():
            assert case.truth["subregion_volumes_ml"][name] == pytest.approx(counts[value] * vml, abs=1e-3)
        assert case.truth["whole_tumor_ml"] == pytest.approx(counts[1:].sum() * vml, abs=1e-3)
        if case.truth["tumor_present"]:
            centroid = np.argwhere(case.labels > 0).mean(0)
            x_ras = (case.volume.affine @ np.r_[centroid, 1.0])[0]
            assert (x_ras < 0) == (case.truth["hemisphere"] == "left")
    whole = [c.truth["whole_tumor_ml"] for c in present]
    assert max(whole) > 2 * min(whole)


def test_cxr_findings_prevalence_ctr_and_laterality():
    cases = [generate("cxr", s, shape=(128, 128)) for s in range(150)]
    for f in CXR_FINDINGS:
        rate = np.mean([c.truth["findings"][f] for c in cases])
        assert 0.18 <= rate <= 0.42, (f, rate)
    assert 0.05 <= np.mean([c.truth["normal"] for c in cases]) <= 0.35
    for c in cases:
        assert (c.truth["ctr"] > 0.5) == c.truth["findings"]["cardiomegaly"]
        assert c.truth["ctr"] == pytest.approx(c.truth["heart_width_mm"] / c.truth["thorax_width_mm"], abs=0.01)
        for f in ("pleural effusion", "nodule", "pneumothorax", "consolidation"):
            assert (c.truth["laterality"][f] is not None) == c.truth["findings"][f]
    sides = {c.truth["laterality"]["nodule"] for c in cases if c.truth["findings"]["nodule"]}
    assert sides == {"left", "right"}


def test_cxr_nodule_is_visible_on_the_correct_side():
    seen = 0
    for s in range(40):
        c = generate("cxr", s, findings=("nodule",), noise=0.01)
        img = c.volume.array[:, :, 0].astype(float)  # (columns, rows)
        col, row = c.truth["details"]["nodule"]["centre_px"]
        r = c.truth["details"]["nodule"]["diameter_mm"] / 2 / c.truth["pixel_spacing_mm"]
        ii, jj = np.mgrid[0: img.shape[0], 0: img.shape[1]]
        d = np.hypot(ii - col, jj - row)
        inside = img[d <= max(r * 0.6, 1.0)].mean()
        ring = img[(d > r + 2) & (d < r + 5)].mean()
        assert inside > ring + 60, (s, inside, ring)
        assert (col > img.shape[0] / 2) == (c.truth["laterality"]["nodule"] == "left")  # PA: patient left on image right
        seen += 1
    assert seen == 40


def test_unknown_kind_and_option_are_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        generate("pet", 0)
    with pytest.raises(ValueError, match="unknown ct phantom option"):
        generate("ct", 0, colour="red")
