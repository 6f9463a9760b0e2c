"""NIfTI, NRRD / MetaImage and PNG / JPEG uploads, alone and beside DICOM."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from data import IngestError, load_study


def test_nifti_keeps_values_affine_and_splits_4d(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 5, 4, 2)).astype(np.float32)
    affine = np.array([[0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "sub-01_T2w.nii.gz")
    study = load_study(tmp_path / "sub-01_T2w.nii.gz")
    assert len(study.series) == 2 and study.series[0].modality == "MR" and study.series[0].volume.sequence == "T2"
    for t, series in enumerate(study.series):
        np.testing.assert_array_equal(series.volume.array, data[..., t])
        np.testing.assert_allclose(series.volume.affine, affine)
        assert series.source_format == "nifti" and series.volume.study_uid == study.uid


def test_nifti_scaling_and_ct_guess(tmp_path):
    img = nib.Nifti1Image(np.arange(-1000, 1400, 10, dtype=np.int16).reshape(6, 5, 8), np.eye(4))
    img.header.set_slope_inter(2.0, 24.0)
    nib.save(img, tmp_path / "scan.nii")
    volume = load_study(tmp_path / "scan.nii").series[0].volume
    np.testing.assert_allclose(volume.array, nib.load(tmp_path / "scan.nii").get_fdata())
    assert volume.modality == "CT"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_round_trip_lps_to_ras(tmp_path, suffix):
    array = np.random.default_rng(2).integers(0, 500, size=(4, 5, 6)).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / f"vol{suffix}"))
    volume = load_study(tmp_path / f"vol{suffix}").series[0].volume
    np.testing.assert_array_equal(volume.array, array.transpose(2, 1, 0))
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 0)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose((volume.affine @ [*index, 1.0])[:3], lps * [-1, -1, 1])


def test_png_and_jpeg(tmp_path):
    grey = (np.arange(12 * 9).reshape(9, 12) * 500).astype(np.uint16)  # (rows, cols)
    Image.fromarray(grey).save(tmp_path / "xray.png")
    rgb = np.random.default_rng(3).integers(0, 255, size=(8, 10, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    study = load_study(tmp_path)
    by_name = {s.description: s for s in study.series}
    xray = by_name["xray"].volume
    np.testing.assert_array_equal(xray.array[:, :, 0], grey.T)
    assert xray.array.dtype == np.uint16 and xray.shape == (12, 9, 1) and "1 mm pixels assumed" in by_name["xray"].warnings[0]
    photo = by_name["photo"].volume
    assert photo.array.shape == (10, 8, 1, 3)
    np.testing.assert_array_equal(photo.array[:, :, 0, :], np.asarray(Image.open(tmp_path / "photo.jpg")).transpose(1, 0, 2))


def test_bad_format_files_are_errors_not_crashes(tmp_path, write_series, ct_volume):
    write_series(tmp_path / "dcm", ct_volume)
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "broken.mha").write_text("ObjectType = Image\nNDims = 3\n")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), tmp_path / "mask.nii.gz")
    study = load_study(tmp_path)
    assert {s.source_format for s in study.series} == {"dicom", "nifti"}  # the NIfTI joins the one DICOM study
    errors = " ".join(str(e) for e in study.errors)
    for name in ("broken.nii.gz", "broken.png", "broken.mha"):
        assert name in errors
    with pytest.raises(IngestError, match="broken.png: not a readable PNG/JPEG"):
        load_study(tmp_path / "broken.png")
