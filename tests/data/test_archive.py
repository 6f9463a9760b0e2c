"""Zip uploads: traversal, symbolic links, zip bombs, size and file-count limits, nested archives, name clashes and
damaged entries; the server's disk full or read-only while extracting or writing de-identified files."""

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


def test_name_clashes_long_names_and_damaged_entries_are_errors_and_the_rest_loads(tmp_path, series_files):
    """Every bad entry is one error naming it; nothing escapes and the series still loads."""
    entries = [(f"study/{p.name}", p.read_bytes()) for p in series_files]
    entries += [("a", b"file named a"), ("a/b.dcm", b"under the file a"),  # a file where a folder must be
                ("c/d.dcm", b"x"), ("c", b"a file where a folder is"),
                (f"study/{series_files[0].name}", b"the same name again"),
                ("x" * 300 + ".dcm", b"name longer than the file system allows"),
                ("d/" * 100 + "deep.dcm", b"too deep")]
    archive = _zip(tmp_path / "clash.zip", entries)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr("deflate.dcm", b"\x01" * 5000, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("lzma.dcm", b"\x02" * 5000, compress_type=zipfile.ZIP_LZMA)
        zf.writestr("bzip2.dcm", b"\x03" * 5000, compress_type=zipfile.ZIP_BZIP2)
    data = bytearray(damaged.read_bytes())
    with zipfile.ZipFile(damaged) as zf:  # scramble each entry's compressed bytes
        for info in zf.infolist():
            start = info.header_offset + 30 + len(info.filename.encode())
            data[start + 4: start + info.compress_size - 2] = b"\xa5" * (info.compress_size - 6)
    damaged.write_bytes(bytes(data))
    study = load_study([archive, damaged])
    assert study.series[0].volume.shape[2] == 6
    errors = {e.path.split("/", 1)[1][:12]: e.reason for e in study.errors}
    assert "lies under a name that is a file" in errors["a/b.dcm"]
    assert "name of a folder" in errors["c"]
    assert "same name" in errors[f"study/{series_files[0].name}"[:12]]
    assert "too deep" in errors["x" * 12] and "too deep" in errors["d/d/d/d/d/d/"]
    for entry in ("deflate.dcm", "lzma.dcm", "bzip2.dcm"):
        assert "could not be extracted" in errors[entry], errors
    assert len(study.errors) == 8 + 2  # and the two small files that were extracted are not DICOM


def test_disk_full_while_extracting_is_one_clear_error_and_leaves_nothing(tmp_path, series_files, monkeypatch):
    import builtins

    import data.archive

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    full = lambda path, mode="r", *args, **kwargs: builtins.open("/dev/full", mode, *args, **kwargs)  # noqa: E731
    monkeypatch.setattr(data.archive, "open", full, raising=False)  # every write: ENOSPC, as on a full disk
    archive = _zip(tmp_path / "s.zip", [(p.name, p.read_bytes()) for p in series_files])
    with pytest.raises(IngestError, match=r"temporary disk .* is full .*ask the administrator") as info:
        load_study(archive)
    assert info.value.path is None and "Errno" not in str(info.value)
    assert not any(tmp.iterdir())


def test_read_only_temporary_folder_is_one_clear_error(tmp_path, series_files, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(IngestError, match=r"temporary folder .* cannot be written \(EROFS\).*TMPDIR"):
        load_study(series_files[0].parent)


def test_disk_full_while_writing_deidentified_files_leaves_no_partial_file(tmp_path, series_files, monkeypatch):
    import errno

    import pydicom

    from data.ingest import write_deidentified

    def half_written(self, path, *args, **kwargs):  # the disk fills up in the middle of a file
        with open(path, "wb") as fp:
            fp.write(b"DICM" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", half_written)
    out = tmp_path / "out"
    with pytest.raises(IngestError, match=r"output folder cannot be written \(ENOSPC\).*free space"):
        write_deidentified(series_files[0].parent, out)
    assert not [p for p in out.rglob("*") if p.is_file()]
