"""DICOM series ingest: ordering, geometry, rescale, splitting, warnings, bad files, several studies."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data import IngestError, load_study
from data.ingest import load_studies

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _lps_point(orientation, spacing, origin, i, j, k):
    """DICOM's own formula (PS3.3 C.7.6.2.1.1) for the LPS position of voxel (i=column, j=row) of slice k."""
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.asarray(origin) + i * spacing[0] * r + j * spacing[1] * c + k * spacing[2] * np.cross(r, c)


def test_ct_series_loads_in_hu_with_ras_affine(tmp_path, write_series, ct_volume):
    names = [f"x{n}.dcm" for n in (4, 0, 5, 2, 1, 3)]  # file names say nothing about order
    write_series(tmp_path / "ct", ct_volume, names=names, instance_numbers=[6, 5, 4, 3, 2, 1])
    study = load_study(tmp_path / "ct")
    (series,) = study.series
    volume = series.volume
    np.testing.assert_array_equal(volume.array, ct_volume.astype(np.int32) - 1024)
    assert volume.array.dtype == np.int16 and series.modality == "CT" and series.n_files == 6
    assert volume.spacing == pytest.approx((0.8, 0.7, 2.5))
    world = volume.affine @ np.array([3, 2, 4, 1.0])
    expected = LPS_TO_RAS[:3, :3] @ _lps_point((1, 0, 0, 0, 1, 0), (0.8, 0.7, 2.5), (-100.0, -80.0, 40.0), 3, 2, 4)
    np.testing.assert_allclose(world[:3], expected)
    assert series.warnings == [] and study.errors == [] and volume.window is not None


def test_slices_are_ordered_by_position_not_instance_number(tmp_path, write_series, ct_volume):
    positions = [np.array([0.0, 0.0, z]) for z in (10.0, 12.5, 15.0, 17.5, 20.0, 22.5)]
    order = [3, 0, 5, 1, 4, 2]  # slice k of ct_volume is written at positions[order[k]]
    write_series(tmp_path / "s", ct_volume, positions=[positions[o] for o in order], instance_numbers=list(range(6)))
    volume = load_study(tmp_path / "s").series[0].volume
    expected = ct_volume[:, :, np.argsort(order)].astype(np.int32) - 1024
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine[:3, 3], [0.0, 0.0, 10.0])


def test_orientation_change_splits_the_series(tmp_path, write_series, ct_volume):
    uid = generate_uid()
    study_uid = generate_uid()
    write_series(tmp_path / "a", ct_volume[:, :, :4], series_uid=uid, study_uid=study_uid)
    write_series(tmp_path / "b", ct_volume[:, :, :2], series_uid=uid, study_uid=study_uid,
                 orientation=(1, 0, 0, 0, 0, -1), names=["loc0.dcm", "loc1.dcm"])
    study = load_study(tmp_path)
    assert sorted(s.volume.shape[2] for s in study.series) == [2, 4]
    assert len({s.uid for s in study.series}) == 2
    assert all(any("split" in w for w in s.warnings) for s in study.series)


def test_gap_and_uneven_spacing_are_warned(tmp_path, write_series, ct_volume):
    zs = [0.0, 2.5, 5.0, 10.0, 12.5, 15.1]  # one missing slice at 7.5, one step 2.6 mm
    write_series(tmp_path / "g", ct_volume, positions=[np.array([0, 0, z]) for z in zs])
    warnings = " ".join(load_study(tmp_path / "g").series[0].warnings)
    assert "gap between slices 2 and 3" in warnings and "1 slice(s) missing" in warnings
    assert "uneven slice spacing" in warnings


def test_repeated_positions_split_into_volumes(tmp_path, write_series, ct_volume):
    positions = [np.array([0, 0, 2.5 * (k % 3)]) for k in range(6)]  # two echoes at three positions
    write_series(tmp_path / "e", ct_volume, positions=positions, modality="MR", slope=None,
                 extra={"EchoTime": 10.0})
    study = load_study(tmp_path / "e")
    assert [s.volume.shape for s in study.series] == [(12, 10, 3), (12, 10, 3)]
    assert "2 images at every slice position" in study.series[0].warnings[1]


def test_float_rescale_matches_pydicom(tmp_path, write_series, ct_volume):
    paths = write_series(tmp_path / "f", ct_volume, slope=0.37, intercept=-12.25, modality="MR")
    volume = load_study(tmp_path / "f").series[0].volume
    ds = pydicom.dcmread(paths[2])
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).T
    np.testing.assert_allclose(volume.array[:, :, 2], expected, rtol=1e-6)


def test_monochrome1_is_inverted_and_12_bit_values_masked(tmp_path, write_series):
    stored = np.array([[0, 4095], [1000, 0xF123]], dtype=np.uint16).reshape(2, 2, 1)  # 0xF123: bits above 12 set
    write_series(tmp_path / "m1", stored, photometric="MONOCHROME1", slope=None, bits_stored=12, signed=False,
                 modality="MR", extra={"WindowCenter": 1000, "WindowWidth": 500})
    volume = load_study(tmp_path / "m1").series[0].volume
    np.testing.assert_array_equal(volume.array[:, :, 0], [[4095, 0], [3095, 4095 - 0x123]])
    assert volume.window == (3095.0, 500.0) and volume.meta["photometric"] == "MONOCHROME2"


def test_bad_files_are_reported_and_the_rest_loads(tmp_path, write_series, ct_volume):
    paths = write_series(tmp_path / "u", ct_volume)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])  # truncated pixel data
    (tmp_path / "u" / "notes.dcm").write_bytes(b"this is not DICOM at all\n" * 10)
    header_only = pydicom.dcmread(paths[0])
    del header_only.PixelData
    header_only.SOPInstanceUID = header_only.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    header_only.save_as(tmp_path / "u" / "nopixels.dcm")
    study = load_study(tmp_path / "u")
    assert study.series[0].volume.shape == (12, 10, 5)
    messages = sorted(str(e) for e in study.errors)
    assert len(messages) == 3
    assert any("IM0002.dcm: file truncated" in m for m in messages)
    assert any("notes.dcm: not a DICOM file" in m for m in messages)
    assert any("nopixels.dcm" in m and "no Pixel Data" in m for m in messages)
    assert any("gap between slices 1 and 2" in w for w in study.series[0].warnings)  # the lost slice shows


def test_non_image_objects_are_skipped_with_a_reason(tmp_path, write_series, ct_volume):
    paths = write_series(tmp_path / "ct", ct_volume)
    ref = pydicom.dcmread(paths[0])
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = ref.StudyInstanceUID, generate_uid(), "SR"
    sr.save_as(tmp_path / "ct" / "report.dcm", enforce_file_format=True)
    (tmp_path / "ct" / "readme.txt").write_text("hello")
    study = load_study(tmp_path / "ct")
    reasons = {s.name.split("/")[-1]: s.reason for s in study.skipped}
    assert "Basic Text SR Storage" in reasons["report.dcm"] and "not an image" in reasons["report.dcm"]
    assert "text file" in reasons["readme.txt"]
    assert len(study.series) == 1


def test_several_studies(tmp_path, write_series, ct_volume):
    write_series(tmp_path / "one", ct_volume)
    write_series(tmp_path / "two", ct_volume[:, :, :3])
    with pytest.raises(IngestError, match="holds 2 studies"):
        load_study(tmp_path)
    studies = load_studies(tmp_path)
    assert sorted(s.series[0].volume.shape[2] for s in studies) == [3, 6]


def test_nothing_loadable_raises_with_the_reasons(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(IngestError, match=r"no image series could be loaded .*a\.txt: text file"):
        load_study(tmp_path)
    with pytest.raises(IngestError, match="no such file or folder"):
        load_study(tmp_path / "missing")


def test_deidentify_off_keeps_original_uids(tmp_path, write_series, ct_volume):
    paths = write_series(tmp_path / "k", ct_volume)
    ds = pydicom.dcmread(paths[0])
    raw = load_study(tmp_path / "k", deidentify=False)
    assert raw.uid == ds.StudyInstanceUID and raw.series[0].uid == ds.SeriesInstanceUID and raw.deid_manifest == {}
    clean = load_study(tmp_path / "k")
    assert clean.uid.startswith("2.25.") and clean.uid != ds.StudyInstanceUID
    assert ds.SOPInstanceUID not in clean.series[0].volume.meta["sop_instance_uids"]
    assert len(set(clean.series[0].volume.meta["sop_instance_uids"])) == 6


def test_rgb_and_multiframe_from_pydicom_corpus():
    from pydicom.data import get_testdata_file

    rgb = load_study(get_testdata_file("SC_rgb_2frame.dcm")).series[0].volume
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_2frame.dcm"))
    assert rgb.array.shape == (ds.Columns, ds.Rows, 2, 3) and rgb.array.dtype == np.uint8
    np.testing.assert_array_equal(rgb.array[:, :, 1, :], ds.pixel_array[1].transpose(1, 0, 2))
    enhanced = load_study(get_testdata_file("emri_small.dcm"))
    assert sum(s.volume.shape[2] for s in enhanced.series) == 10
