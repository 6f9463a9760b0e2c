"""Phantom studies on disk: valid DICOM whose geometry matches the affine, labels, truth, fake identity."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, MRImageStorage

from data.phantoms import DICOM_DIRNAME, generate, synthesize, write_study
from data.phantoms.cli import add_parsers

LPS = np.diag([-1.0, -1.0, 1.0])


def _read_series(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray, np.ndarray]:
    """Slices sorted along the slice normal, the (I, J, K) array in stored-to-real units, the RAS affine."""
    dss = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    vol = np.stack([d.pixel_array.T * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0)) for d in dss], axis=-1)
    row_sp, col_sp = (float(v) for v in dss[0].PixelSpacing)
    p0, p1 = (np.array(d.ImagePositionPatient, dtype=float) for d in dss[:2])
    lps = np.column_stack([iop[:3] * col_sp, iop[3:] * row_sp, p1 - p0])
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = LPS @ lps, LPS @ p0
    return dss, vol, aff


def test_ct_series_round_trips_hu_and_geometry(tmp_path):
    case = generate("ct", 4, shape=(64, 56, 24))
    out = write_study(case, tmp_path / "ct", patient={"PatientName": "Testperson^Alice"})
    dss, vol, aff = _read_series(out / DICOM_DIRNAME / "CT")
    assert len(dss) == 24
    np.testing.assert_array_equal(vol, case.volume.array)  # HU back through RescaleIntercept
    np.testing.assert_allclose(aff, case.volume.affine, atol=1e-3)
    d = dss[0]
    assert d.SOPClassUID == CTImageStorage and d.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert d.Modality == "CT" and d.RescaleType == "HU" and d.BitsStored == 12
    assert float(d.SliceThickness) == pytest.approx(case.volume.spacing[2], abs=1e-3)
    assert d.SeriesDescription.startswith("CT ") and case.truth["phase"].upper() in d.SeriesDescription
    assert {x.StudyInstanceUID for x in dss} == {case.volume.study_uid} and len({x.SOPInstanceUID for x in dss}) == 24
    assert str(d.PatientName) == "Testperson^Alice" and d.PatientID.startswith("PID") and d.AccessionNumber
    assert d.InstitutionName and d.ReferringPhysicianName and len(d.PatientBirthDate) == 8
    assert any(elem.tag.is_private for elem in d)  # a private tag for de-identification to drop
    names = [p.name for p in sorted((out / DICOM_DIRNAME / "CT").glob("*.dcm"))]
    by_name = [int(pydicom.dcmread(out / DICOM_DIRNAME / "CT" / n, stop_before_pixels=True).InstanceNumber) for n in names]
    assert by_name != sorted(by_name)  # file names do not give the slice order away

    img = nib.load(out / "labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), case.labels)
    np.testing.assert_allclose(img.affine, case.volume.affine, atol=1e-4)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["organ_volumes_ml"] == case.truth["organ_volumes_ml"] and truth["series"]["CT"]["n_files"] == 24
    patient = json.loads((out / "patient.json").read_text())
    assert patient["PatientName"] == "Testperson^Alice"


def test_mri_study_has_four_series_in_one_study(tmp_path):
    case = generate("mri", 2, shape=(48, 48, 12))
    out = write_study(case, tmp_path / "mri")
    study_uids, series_uids = set(), set()
    for seq in ("T1", "T1c", "T2", "FLAIR"):
        dss, vol, aff = _read_series(out / DICOM_DIRNAME / seq)
        np.testing.assert_array_equal(vol, case.volumes[seq].array)
        np.testing.assert_allclose(aff, case.volumes[seq].affine, atol=1e-3)
        assert dss[0].SOPClassUID == MRImageStorage and dss[0].SeriesDescription == f"{seq} AX"
        study_uids |= {d.StudyInstanceUID for d in dss}
        series_uids |= {d.SeriesInstanceUID for d in dss}
    assert len(study_uids) == 1 and len(series_uids) == 4
    assert (out / "labels.nii.gz").exists()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_radiograph_is_digital_xray(tmp_path, photometric):
    case = generate("cxr", 5, shape=(96, 80))
    out = write_study(case, tmp_path / photometric, photometric=photometric)
    (path,) = (out / DICOM_DIRNAME / "DX").glob("*.dcm")
    d = pydicom.dcmread(path)
    assert d.SOPClassUID == DigitalXRayImageStorageForPresentation and d.Modality == "DX"
    assert d.PhotometricInterpretation == photometric and (d.Columns, d.Rows) == (96, 80)
    px = d.pixel_array.T.astype(np.int32)
    expected = case.volume.array[:, :, 0].astype(np.int32)
    np.testing.assert_array_equal(px if photometric == "MONOCHROME2" else 4095 - px, expected)
    assert float(d.ImagerPixelSpacing[0]) == pytest.approx(case.truth["pixel_spacing_mm"], abs=1e-3)
    assert not (out / "labels.nii.gz").exists()


def test_synthesize_and_cli(tmp_path):
    paths = synthesize("cxr", 3, tmp_path / "a", seed=10)
    assert [p.name for p in paths] == ["cxr_000010", "cxr_000011", "cxr_000012"]
    assert json.loads((paths[1] / "truth.json").read_text())["seed"] == 11
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["synth", "--kind", "ct", "--n", "2", "--out", str(tmp_path / "b"), "--seed", "3", "--shape", "32", "32", "16"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["ct_000003", "ct_000004"]
    assert len(list((tmp_path / "b" / "ct_000003" / DICOM_DIRNAME / "CT").glob("*.dcm"))) == 16


@pytest.mark.slow
def test_full_size_ct_series_writes_in_seconds(tmp_path):
    case = generate("ct", 1, shape=(512, 512, 300))
    t0 = time.perf_counter()
    out = write_study(case, tmp_path / "big")
    assert time.perf_counter() - t0 < 30.0
    assert len(list((out / DICOM_DIRNAME / "CT").glob("*.dcm"))) == 300


@pytest.mark.parametrize("kind,options,photometric", [("ct", {"shape": (48, 40, 12)}, "MONOCHROME2"), ("mri", {"shape": (40, 40, 10)}, "MONOCHROME2"),
                                                      ("cxr", {"shape": (96, 96)}, "MONOCHROME1")])
def test_ingest_reads_back_the_phantom_exactly_without_its_identity(tmp_path, kind, options, photometric):
    from data import load_study

    case = generate(kind, 6, **options)
    out = write_study(case, tmp_path / kind, photometric=photometric)
    study = load_study(out / DICOM_DIRNAME)
    assert len(study.series) == len(case.volumes) and not study.errors
    patient = json.loads((out / "patient.json").read_text())
    for series in study.series:
        vol = series.volume
        ref = case.volumes[vol.sequence] if kind == "mri" else case.volume
        np.testing.assert_array_equal(np.asarray(vol.array, dtype=np.int32), ref.array.astype(np.int32))
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-3)
        text = json.dumps([series.description, vol.description, vol.meta, study.description], default=str)
        assert patient["PatientID"] not in text and patient["PatientName"].split("^")[0] not in text
