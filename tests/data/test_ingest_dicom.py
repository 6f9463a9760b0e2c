"""DICOM series ingest: ordering, geometry, rescale, splitting, warnings, bad files, several studies, and the
resource budgets and geometry checks that keep hostile headers from taking the server down."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from data import IngestError, load_study
from data.display import PLANES, reformat
from data.ingest import IngestLimits, load_studies
from data.limits import ImageBudget

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


def _displays(study) -> None:
    for series in study.series:
        assert np.all(np.isfinite(series.volume.affine)) and all(0 < s < 1e4 for s in series.volume.spacing)
        for plane in PLANES:
            assert reformat(series.volume, plane).image.size > 0


def test_a_header_claiming_8_million_frames_fails_fast(tmp_path, write_series, ct_volume):
    """Before: an object per claimed frame (55 s, 2.8 GB). Now: refused from the header in milliseconds."""
    (path,) = write_series(tmp_path / "u", ct_volume[:, :, :1], extra={"NumberOfFrames": 8_000_000})
    tracemalloc.start()
    started = time.perf_counter()
    study = load_studies(path)[0]
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 50 * 2**20
    (error,) = study.errors
    assert "8000000 frames" in error.reason and "IngestLimits.max_frames_per_file" in error.reason
    (path,) = write_series(tmp_path / "v", ct_volume[:, :, :1], extra={"NumberOfFrames": 40})
    (error,) = load_studies(path)[0].errors  # within the frame limit, but the pixel data holds one frame
    assert "pixel data holds 240 B" in error.reason and "9.38 KiB" in error.reason


def test_default_limits_load_a_2000_slice_ct_and_refuse_more_than_the_budget():
    limits = IngestLimits()
    ct = 2000 * 512 * 512 * 2  # int16
    limits.check_image_bytes(ct, "enhanced-ct.dcm", "one enhanced CT file", stored=ct)  # one 2,000-frame file
    ImageBudget(limits).take(ct)  # or 2,000 files
    with pytest.raises(IngestError, match=r"the limit is 2 GiB per file.*IngestLimits.max_image_bytes_per_file"):
        limits.check_image_bytes(3 * 2**30, "big.dcm", "a file")
    with pytest.raises(IngestError, match=r"expand 2048-fold.*IngestLimits.max_inflation_ratio"):
        limits.check_image_bytes(2**30, "bomb.dcm", "a file", stored=2**19)
    budget = ImageBudget(limits)
    budget.take(6 * 2**30)
    with pytest.raises(IngestError, match=r"more than 8 GiB once decoded.*IngestLimits.max_image_bytes"):
        budget.take(3 * 2**30)
    with pytest.raises(ValueError, match="max_frames_per_file must be > 0, got 0"):
        IngestLimits(max_frames_per_file=0)


@pytest.mark.slow
def test_a_2000_slice_512_ct_loads_with_default_limits(tmp_path, write_series):
    slices = np.zeros((512, 512, 2000), dtype=np.int16)
    slices[200:300, 200:300, :] = 1000
    write_series(tmp_path / "ct", slices, spacing=(0.7, 0.7, 0.5))
    volume = load_study(tmp_path / "ct").series[0].volume
    assert volume.shape == (512, 512, 2000) and volume.array[250, 250, 1999] == 1000 - 1024


def _deflated(ds: Dataset, pixels: int) -> bytes:
    """``ds`` written as Deflated Explicit VR Little Endian with ``pixels`` bytes of zero pixel data."""
    body = io.BytesIO()
    ds.save_as(body, implicit_vr=False, little_endian=True, enforce_file_format=False)
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))]
    chunk = bytes(1 << 24)
    for _ in range(pixels // len(chunk)):
        parts.append(deflater.compress(chunk))
    parts.append(deflater.compress(bytes(pixels % len(chunk))) + deflater.flush())
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO(b"\0" * 128 + b"DICM")
    out.seek(0, io.SEEK_END)
    writer = DicomFileLike(out)
    writer.is_little_endian, writer.is_implicit_VR = True, False
    write_file_meta_info(writer, meta)
    return out.getvalue() + b"".join(parts)


def test_deflated_dicom_is_inflated_within_the_budget(tmp_path, write_series, ct_volume):
    """pydicom inflates a deflated file whole, even for a header read: ingest streams it into a bounded buffer."""
    (path,) = write_series(tmp_path / "src", ct_volume[:, :, :1])
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 10  # 320 MiB of zeros in about 1 MiB
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(_deflated(ds, 4096 * 4096 * 10 * 2))
    tracemalloc.start()
    (error,) = load_studies(bomb)[0].errors
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "Deflated DICOM inflates beyond 128 MiB" in error.reason and "max_inflation_ratio" in error.reason
    assert peak < 64 * 2**20
    from pydicom.data import get_testdata_file

    real = load_study(get_testdata_file("image_dfl.dcm")).series[0]  # a real deflated file still loads
    reference = pydicom.dcmread(get_testdata_file("image_dfl.dcm"))
    np.testing.assert_array_equal(real.volume.array[:, :, 0], reference.pixel_array.T)
    assert real.volume.meta["transfer_syntax"] == "Deflated Explicit VR Little Endian"


@pytest.mark.parametrize("bad", ["0\\0", "nan\\nan", "inf\\1", "1e308\\1e308"])
def test_absurd_functional_group_spacing_is_refused_and_the_study_displays(tmp_path, write_series, ct_volume, bad):
    """Enhanced multi-frame: an absurd per-frame PixelSpacing falls back to the shared one; a study always displays."""
    (path,) = write_series(tmp_path / "u", ct_volume[:, :, :1])
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = np.concatenate([ct_volume[:, :, k].T for k in range(3)]).astype(np.int16).tobytes()
    del ds.ImagePositionPatient
    shared, measures = Dataset(), Dataset()
    measures.PixelSpacing = [0.6, 0.6]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = []
    for k in range(3):
        item, plane, frame_measures = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        frame_measures.add_new(0x00280030, "DS", bad)
        item.PlanePositionSequence, item.PixelMeasuresSequence = [plane], [frame_measures]
        ds.PerFrameFunctionalGroupsSequence.append(item)
    ds.save_as(path)
    study = load_study(path)
    assert study.series[0].volume.shape == (12, 10, 3)
    np.testing.assert_allclose(study.series[0].volume.spacing, (0.6, 0.6, 2.5))
    _displays(study)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].add_new(0x00280030, "DS", bad)
    ds.PixelSpacing = bad
    ds.save_as(path)
    series = load_study(path).series[0]
    assert series.volume.spacing[:2] == (1.0, 1.0) and any("no Pixel Spacing" in w for w in series.warnings)


def test_absurd_positions_are_repaired_with_a_warning_and_display(tmp_path, write_series, ct_volume):
    positions = [(0.0, 0.0, 0.0), (0.0, 0.0, 1e308), (0.0, 0.0, -1e308), (0.0, 0.0, 5e307), (0.0, 0.0, 3.0),
                 (0.0, 0.0, 7.0)]
    write_series(tmp_path / "u", ct_volume, positions=positions)
    study = load_study(tmp_path / "u")
    _displays(study)
    warnings = " ".join(w for s in study.series for w in s.warnings)
    assert "slice spacing" in warnings or "placed at the origin" in warnings


def test_an_unreadable_header_element_is_dropped_and_the_upload_loads(tmp_path, write_series, ct_volume, identity):
    """Before: NotImplementedError out of clean_descriptor aborted the whole upload."""
    values, strings = identity
    paths = write_series(tmp_path / "u", ct_volume, extra={"StudyDescription": f"CT for {values['PatientName']}"})
    for path in paths:  # Patient Name with a VR pydicom does not know: every header, the study description's too
        path.write_bytes(path.read_bytes().replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00ZZ", 1))
    with pytest.raises(NotImplementedError):
        str(pydicom.dcmread(paths[0]).PatientName)
    study = load_study(tmp_path / "u")
    assert study.series[0].volume.shape == (12, 10, 6) and not study.errors
    assert "PatientName" in study.deid_manifest["attributes"]
    assert "1 header element(s) could not be read and were removed: PatientName." in study.series[0].warnings
    assert not any(s.lower() in study.description.lower() for s in strings)  # still cleaned from the raw bytes


def test_the_file_meta_end_is_trusted_only_when_no_group_2_element_follows_it():
    """The quick deflate check reads the file meta's own length; a file whose group length stops short of a later
    group-2 element (which pydicom would still read) falls back to scanning the whole file."""
    from data.dicom import _file_meta_end

    meta = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + (10).to_bytes(4, "little")
    body = b"\x02\x00\x01\x00OB\x00\x00" + b"\x02\x00"  # 10 bytes of group 2
    assert _file_meta_end(meta + body + b"\x08\x00\x05\x00" + b"\x00" * 16) == 154
    assert _file_meta_end(meta + body + b"\x02\x00\x10\x00" + b"\x00" * 16) is None  # more group 2 after the stated end
    assert _file_meta_end(b"\x00" * 200) is None  # no preamble marker
