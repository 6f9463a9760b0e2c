"""Family B phantoms: same truth shape as family A, drawn another way, frozen held-out split, never trained on."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import data.phantoms as family_a
import data.phantoms_b as family_b
from data.phantoms.labels import CT_LABELS

ROOT = Path(__file__).resolve().parents[2]
FROZEN = json.loads((ROOT / "tests/data/phantoms_b_heldout.json").read_text())


def _keys(truth: dict) -> set[str]:
    return set(truth) - {"tumor_type"}  # family A adds tumor_type only when a tumour is drawn; so does B


@pytest.mark.parametrize("kind", ["mri", "cxr"])
def test_family_b_truth_has_family_a_keys(kind):
    a, b = family_a.generate(kind, 30_000), family_b.generate(kind, family_b.HELDOUT_SEEDS[kind][0])
    assert _keys(a.truth) == _keys(b.truth)
    assert set(a.volumes) == set(b.volumes)
    if kind == "cxr":
        assert set(a.truth["laterality"]) == set(b.truth["laterality"])


def test_family_b_ct_truth_matches_its_label_map():
    case = family_b.generate("ct", family_b.HELDOUT_SEEDS["ct"][1])
    a = family_a.generate("ct", 30_000)
    assert set(case.truth) == set(a.truth)
    counts = np.bincount(case.labels.ravel(), minlength=13)
    vml = case.volume.voxel_volume_ml
    by_name = {n: v for v, n in CT_LABELS.items()}
    for name, ml in case.truth["organ_volumes_ml"].items():
        assert ml == pytest.approx(counts[by_name[name]] * vml, abs=1e-3)
    lesion_keys = {"type", "label", "organ", "centre_mm", "centre_voxel", "max_diameter_mm", "volume_ml", "kind", "hu"}
    assert case.truth["lesions"], "this held-out case carries lesions"
    for les in case.truth["lesions"]:
        assert set(les) == lesion_keys
    for name, ml in case.truth["lesion_volumes_ml"].items():
        assert sum(les["volume_ml"] for les in case.truth["lesions"] if les["type"] == name) == pytest.approx(ml, abs=0.01)
        assert ml == pytest.approx(counts[by_name[name]] * vml, abs=1e-3)
    assert case.volume.array.dtype == np.int16 and case.labels.shape == case.volume.shape


def test_family_b_is_stored_in_orientations_family_a_never_uses():
    """Family A always stores LPS columns with ascending slices; B's held-out CTs include RAS-stored and descending ones."""
    signs = {tuple(np.sign(np.diag(family_b.generate("ct", s).volume.affine)[:3]).astype(int)) for s in family_b.HELDOUT_SEEDS["ct"][:6]}
    assert signs - {(-1, -1, 1)}, signs


def test_family_b_mri_backgrounds_include_exact_zero_and_noise():
    zero_share = []
    for s in family_b.HELDOUT_SEEDS["mri"][:6]:
        t1 = family_b.generate("mri", s).volumes["T1"].array
        zero_share.append(float((t1 == 0).mean()))
    assert max(zero_share) > 0.3, "some brains sit in exactly-zero air (skull-stripped or masked)"
    assert min(zero_share) < 0.05, "some have noise in the air"


@pytest.mark.parametrize("kind", ["mri", "cxr"])
def test_held_out_cases_regenerate_to_their_recorded_hash(kind):
    seeds = family_b.HELDOUT_SEEDS[kind][:2]
    for s in seeds:
        assert family_b.case_fingerprint(family_b.generate(kind, s)) == FROZEN["sha256"][kind][str(s)], f"{kind} seed {s} changed"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ct", "mri", "cxr"])
def test_every_held_out_case_regenerates_to_its_recorded_hash(kind):
    assert sorted(FROZEN["sha256"][kind], key=int) == [str(s) for s in family_b.HELDOUT_SEEDS[kind]]
    for s in family_b.HELDOUT_SEEDS[kind]:
        assert family_b.case_fingerprint(family_b.generate(kind, s)) == FROZEN["sha256"][kind][str(s)], f"{kind} seed {s} changed"


def test_a_changed_generator_changes_the_fingerprint():
    case = family_b.generate("cxr", family_b.HELDOUT_SEEDS["cxr"][0])
    before = family_b.case_fingerprint(case)
    case.truth["ctr"] += 0.001
    assert family_b.case_fingerprint(case) != before


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_training_entry_point_imports_family_b():
    training = [ROOT / "experts/train.py", *sorted((ROOT / "experts").glob("train_tasks*.py")),
                *sorted((ROOT / "vlm/train").rglob("*.py")), *sorted((ROOT / "data/instructions").rglob("*.py"))]
    assert len(training) > 5
    users = [str(p.relative_to(ROOT)) for p in training
             if any(m.startswith("data.phantoms_b") for m in _imports(p)) or "phantoms_b" in p.read_text()]
    assert not users, f"family B is held out: training code must not use it, found in {users}"


def test_family_b_writes_as_dicom_and_reads_back_voxel_exact(tmp_path):
    import data
    from experts.preprocess import labels_onto_grid

    case = family_b.generate("mri", family_b.HELDOUT_SEEDS["mri"][0])
    folder = family_b.write_study(case, tmp_path / "s")
    study = data.load_study(family_a.study_files(folder))
    t1 = next(s.volume for s in study.series if s.volume.sequence == "T1")
    back = labels_onto_grid(case.volumes["T1"].array, case.volumes["T1"].affine, t1)
    np.testing.assert_array_equal(back, t1.array)
    assert {s.volume.sequence for s in study.series} == {"T1", "T1c", "T2", "FLAIR"}
