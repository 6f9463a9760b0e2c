"""`m3 experts list | run` end to end on studies written as real DICOM, and on nibabel's real
anatomical.nii (refused with a clear message, the process stays up)."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel
import numpy as np
import pytest
from PIL import Image

import data.phantoms
from app.main import main

ANATOMICAL = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def test_list_prints_every_expert_with_its_card(capsys):
    assert main(["experts", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ct_segmentation", "mri_brain_tumor", "cxr_classification"):
        assert name in out
    assert "not for clinical use" in out


def test_run_ct_writes_summary_findings_overlay_and_seg(tmp_path, capsys):
    case = data.phantoms.generate("ct", 30_005, shape=(96, 96, 48))
    study = data.phantoms.write_study(case, tmp_path / "ct")
    out = tmp_path / "out"
    assert main(["experts", "run", "ct_segmentation", str(study / "dicom"), "--targets", "organs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("CT segmentation:") and "liver" in printed
    findings = json.loads((out / "findings.json").read_text())
    assert findings["arguments"] == {"targets": "organs"}
    liver = next(m for m in findings["measurements"] if m["structure"] == "liver")
    # a small field of view: the liver is over-called here (+20 %); full-size studies are held to 10 % in test_experts
    assert liver["unit"] == "mL" and liver["value"] == pytest.approx(case.truth["organ_volumes_ml"]["liver"], rel=0.25)
    picture = np.asarray(Image.open(out / "overlay.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3
    seg = hd.seg.segread(out / "seg.dcm")
    assert "liver" in [s.SegmentLabel for s in seg.SegmentSequence]
    identity = json.loads((study / "patient.json").read_text())
    raw = (out / "seg.dcm").read_bytes() + (out / "findings.json").read_bytes()
    for key in ("PatientName", "PatientID"):
        assert str(identity[key]).encode() not in raw  # the SEG references the de-identified series only


def test_run_mri_finds_the_four_sequences_in_a_dicom_study(tmp_path, capsys):
    case = data.phantoms.generate("mri", 30_006, tumor=True)
    study = data.phantoms.write_study(case, tmp_path / "mri")
    assert main(["experts", "run", "mri_brain_tumor", str(study / "dicom"), "--out", str(tmp_path / "o")]) == 0
    assert "whole tumour" in capsys.readouterr().out
    assert (tmp_path / "o" / "seg.dcm").is_file()


def test_nibabel_anatomical_is_refused_clearly_by_each_expert(tmp_path, capsys):
    assert main(["experts", "run", "ct_segmentation", str(ANATOMICAL), "--out", str(tmp_path / "a")]) == 1
    assert "must be a CT image, got modality 'OT'" in capsys.readouterr().err
    assert main(["experts", "run", "mri_brain_tumor", str(ANATOMICAL), "--out", str(tmp_path / "b")]) == 1
    assert "missing MRI sequences T1, T1c, T2, FLAIR" in capsys.readouterr().err
    assert main(["experts", "run", "cxr_classification", str(ANATOMICAL), "--out", str(tmp_path / "c")]) == 1
    assert "DX or CR" in capsys.readouterr().err


def test_run_cxr_gives_every_finding_with_its_probability_and_threshold(tmp_path, capsys):
    case = data.phantoms.generate("cxr", 30_008)  # effusion, pneumothorax, consolidation; normal heart
    study = data.phantoms.write_study(case, tmp_path / "cxr")
    assert main(["experts", "run", "cxr_classification", str(study / "dicom"), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.startswith("Chest X-ray:")
    findings = {f["label"]: f for f in json.loads((tmp_path / "o" / "findings.json").read_text())["findings"]}
    assert set(case.truth["findings"]) <= set(findings)
    assert all(0.0 <= f["probability"] <= 1.0 and 0.0 < f["threshold"] < 1.0 for f in findings.values())
    for label in ("pleural effusion", "pneumothorax", "cardiomegaly"):
        assert findings[label]["present"] == case.truth["findings"][label], label
    assert (tmp_path / "o" / "overlay.png").is_file()
