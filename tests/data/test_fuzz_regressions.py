"""What fuzzing ingest found, one test each: NIfTI, NRRD / MetaImage and PNG inputs that took memory, hung,
read server files or loaded but could not be displayed, and the geometry repairs that keep a study displayable."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest

from data import load_studies
from data.display import PLANES, reformat
from data.geometry import checked_affine


def _nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytearray:
    return bytearray(nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_bytes())


def test_singular_and_non_finite_nifti_affines_are_repaired_and_display(tmp_path):
    """Before: LinAlgError in display. Now: 1 mm / axial assumed with a warning, and every plane renders."""
    raw = _nifti_bytes(np.arange(60, dtype=np.int16).reshape(5, 4, 3))
    for name, srow in (("zeros", np.zeros((3, 4))), ("nan", np.full((3, 4), np.nan)),
                       ("collinear", [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]),
                       ("huge", [[3e38, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])):
        data = raw.copy()
        data[254:256] = struct.pack("<h", 1)  # sform_code: use the srows below
        data[280:328] = np.asarray(srow, dtype="<f4").tobytes()
        (tmp_path / f"{name}.nii").write_bytes(bytes(data))
        (series,) = load_studies(tmp_path / f"{name}.nii")[0].series
        assert np.all(np.isfinite(series.volume.affine)) and abs(np.linalg.det(series.volume.affine)) > 0
        assert any("assumed" in w for w in series.warnings), (name, series.warnings)
        for plane in PLANES:
            assert reformat(series.volume, plane).image.shape[0] > 0


def test_nifti_gz_bomb_is_refused_from_its_header_before_reading(tmp_path):
    """Before: a 2 MB .nii.gz read 2.2 GB. Now: the header's dims x bytes are checked against the file's size."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.float64)  # 4 GiB claimed
    head = io.BytesIO()
    header.write_to(head)
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(head.getvalue().ljust(352, b"\0") + bytes(1 << 20)))
    tracemalloc.start()
    (error,) = load_studies(path)[0].errors
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "IngestLimits.max_image_bytes_per_file" in error.reason and peak < 16 * 2**20


def test_4d_nifti_reads_only_the_volumes_it_loads_and_truncation_is_caught(tmp_path):
    from data.ingest import IngestLimits

    data = np.arange(4 * 4 * 3 * 10, dtype=np.int16).reshape(4, 4, 3, 10)
    raw = _nifti_bytes(data)
    (tmp_path / "t.nii").write_bytes(bytes(raw[: 352 + 4 * 4 * 3 * 2 * 2]))  # only the first two volumes present
    study = load_studies(tmp_path / "t.nii", limits=IngestLimits(max_volumes_per_file=2))[0]
    assert len(study.series) == 2 and "only the first 2 were loaded" in study.series[0].warnings[-1]
    np.testing.assert_array_equal(study.series[1].volume.array, data[..., 1])
    (error,) = load_studies(tmp_path / "t.nii")[0].errors
    assert "NIfTI file truncated" in error.reason


def test_metaimage_header_that_hung_itk_is_refused_at_once(tmp_path):
    """``NDims = -1`` makes ITK's MetaIO loop for ever (found as a 30 s hang)."""
    (tmp_path / "v.mha").write_bytes(b"ObjectType = Image\nNDims = -1\nDimSize = 4 4 2\nElementType = MET_SHORT\n"
                                     b"ElementDataFile = LOCAL\n" + bytes(64))
    started = time.perf_counter()
    (error,) = load_studies(tmp_path / "v.mha")[0].errors
    assert time.perf_counter() - started < 2.0 and "NDims must be 2, 3 or 4, got -1" in error.reason


@pytest.mark.parametrize("suffix, header", [
    (".mhd", b"ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\nElementDataFile = /etc/hostname\n"),
    (".mhd", b"ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\nElementDataFile = ../secret.raw\n"),
    (".nhdr", b"NRRD0004\ntype: uchar\ndimension: 2\nsizes: 4 4\nencoding: raw\ndata file: /etc/hostname\n\n"),
])
def test_a_data_file_outside_the_upload_is_never_read(tmp_path, suffix, header):
    """A detached header could make ITK read any file of the server into the viewer."""
    (tmp_path / "secret.raw").write_bytes(bytes(range(16)))
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / f"v{suffix}").write_bytes(header)
    study = load_studies(tmp_path / "up" / f"v{suffix}")[0]
    assert not study.series and "must name a file uploaded beside the header" in study.errors[0].reason


def test_png_claiming_a_huge_size_and_png_bomb_are_refused_before_decoding(tmp_path):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0))  # 64 M pixels, grey
    rows = zlib.compress(b"\0" * (8001 * 8000), 9)  # every row: filter byte + 8000 zeros; ~60 KiB
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    tracemalloc.start()
    (error,) = load_studies(tmp_path / "bomb.png")[0].errors
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "fold" in error.reason and "IngestLimits.max_inflation_ratio" in error.reason and peak < 32 * 2**20
    huge = chunk(b"IHDR", struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0))
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + huge + chunk(b"IEND", b""))
    (error,) = load_studies(tmp_path / "huge.png")[0].errors
    assert "pixels" in error.reason and "IngestLimits.max_image_pixels" in error.reason


def test_checked_affine_keeps_a_plausible_affine_and_repairs_each_implausible_part():
    tilted = np.array([[-0.7, 0, 0, 10], [0, -0.7, 0.3, -5], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    same, warnings = checked_affine(tilted)
    np.testing.assert_array_equal(same, tilted)
    assert warnings == []
    spacing = tilted.copy()
    spacing[:3, 0] *= 0.0  # a zero column: its direction is lost too
    fixed, warnings = checked_affine(spacing)
    assert len(warnings) == 2 and np.all(np.isfinite(fixed))
    np.testing.assert_allclose(np.linalg.norm(fixed[:3, :3], axis=0), [1.0, 0.7, np.linalg.norm(tilted[:3, 2])])
    far = tilted.copy()
    far[:3, 3] = [np.inf, 0, 1e9]
    fixed, warnings = checked_affine(far)
    np.testing.assert_array_equal(fixed[:3, 3], 0.0)
    np.testing.assert_array_equal(fixed[:3, :3], tilted[:3, :3])
    assert warnings == ["image position is not finite or beyond 1e+06 mm: placed at the origin."]
