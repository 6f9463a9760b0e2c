"""Zip uploads: traversal, symbolic links, zip bombs, size and file-count limits, nested archives."""

from __future__ import annotations

import stat
import zipfile

import pytest

from data import IngestError, load_study
from data.archive import ArchiveLimits
from data.ingest import IngestLimits


@pytest.fixture
def series_files(tmp_path, write_series, ct_volume):
    return write_series(tmp_path / "src", ct_volume)


def _zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, b"target")
            else:
                zf.writestr(name, data)
    return path


def test_zip_of_a_series_loads_like_the_folder(tmp_path, series_files):
    archive = _zip(tmp_path / "s.zip", [(f"study/{p.name}", p.read_bytes()) for p in series_files])
    from_zip, from_folder = load_study(archive), load_study(series_files[0].parent)
    assert (from_zip.series[0].volume.array == from_folder.series[0].volume.array).all()
    assert from_zip.uid == from_folder.uid


def test_escaping_and_link_entries_are_refused_and_the_rest_loads(tmp_path, series_files):
    link = zipfile.ZipInfo("study/link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = [(f"study/{p.name}", p.read_bytes()) for p in series_files]
    entries += [("../../outside.dcm", series_files[0].read_bytes()), ("/etc/abs.dcm", b"x"),
                ("C:/win.dcm", b"x"), ("link", link)]
    study = load_study(_zip(tmp_path / "evil.zip", entries))
    assert study.series[0].volume.shape[2] == 6
    refused = sorted(str(e) for e in study.errors)
    assert len(refused) == 4
    assert sum("escapes the archive folder" in m for m in refused) == 3
    assert any("symbolic link" in m for m in refused)
    assert not (tmp_path / "outside.dcm").exists() and not (tmp_path.parent / "outside.dcm").exists()


def test_zip_bomb_ratio_is_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", [("zeros.dcm", b"\0" * (8 << 20))])  # ~1000-fold
    with pytest.raises(IngestError, match=r"bomb\.zip: .*fold.*zip bomb"):
        load_study(archive)


def test_uncompressed_total_limit(tmp_path, series_files):
    archive = _zip(tmp_path / "big.zip", [(p.name, p.read_bytes()) for p in series_files], zipfile.ZIP_STORED)
    limits = IngestLimits(archive=ArchiveLimits(max_uncompressed_bytes=4000))
    with pytest.raises(IngestError, match="would expand to .* GiB.*zip bomb or oversized"):
        load_study(archive, limits=limits)


def test_lying_sizes_are_caught(tmp_path):
    """Limits use the declared sizes; inflating never goes past them (the entry is refused as damaged)."""
    archive = tmp_path / "liar.zip"
    _zip(archive, [("a.dcm", b"A" * 5000)], zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # Rewrite the declared uncompressed size (central directory and local header) to 10 bytes.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset: at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(IngestError, match=r"liar\.zip/a\.dcm: entry could not be extracted \(BadZipFile\)"):
        load_study(archive)


def test_oversized_upload_and_file_count(tmp_path, series_files):
    with pytest.raises(IngestError, match="upload is .* GiB, the limit"):
        load_study(series_files[0].parent, limits=IngestLimits(max_upload_bytes=1000))
    with pytest.raises(IngestError, match="upload has 6 files, the limit is 3"):
        load_study(series_files[0].parent, limits=IngestLimits(max_files=3))
    archive = _zip(tmp_path / "many.zip", [(p.name, p.read_bytes()) for p in series_files])
    with pytest.raises(IngestError, match="archive has 6 files, the limit is 2"):
        load_study(archive, limits=IngestLimits(archive=ArchiveLimits(max_entries=2)))


def test_nested_archive_and_damaged_zip(tmp_path, series_files):
    inner = _zip(tmp_path / "inner.zip", [("x.dcm", series_files[0].read_bytes())])
    outer = _zip(tmp_path / "outer.zip", [("inner.zip", inner.read_bytes())] +
                 [(p.name, p.read_bytes()) for p in series_files])
    study = load_study(outer)
    assert any(s.name == "outer.zip/inner.zip" and "nested archive" in s.reason for s in study.skipped)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(IngestError, match="broken.zip: not a readable zip archive"):
        load_study(tmp_path / "broken.zip")
