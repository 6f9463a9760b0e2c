"""Safe extraction of uploaded ``.zip`` archives.

Checks, before and while extracting: the number of entries, the total uncompressed size and the
compression ratio (zip bombs; the sizes written in the archive are not trusted, bytes are counted as
they are inflated), entries that would land outside the target folder (absolute paths, ``..``, drive
letters, symbolic links), encrypted entries and nested archives. An archive-level problem raises
:class:`IngestError`; a bad entry becomes one ``IngestError`` in the returned list and the rest is
extracted.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from data.errors import IngestError
from data.study import SkippedObject

__all__ = ["ArchiveLimits", "Extracted", "extract_zip"]

_CHUNK = 1 << 20


@dataclass
class ArchiveLimits:
    """Limits on one archive (sizes in bytes)."""

    max_entries: int = 50_000
    max_uncompressed_bytes: int = 16 * 2**30
    max_ratio: float = 200.0  # uncompressed ÷ compressed, per entry (entries over 1 MiB) and in total
    min_ratio_check_bytes: int = 1 << 20


@dataclass
class Extracted:
    """What came out of an archive: ``(path on disk, name in the upload)`` pairs and per-entry outcomes."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    errors: list[IngestError] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)
    bytes_written: int = 0


def extract_zip(archive: Path, dest: Path, name: str, limits: ArchiveLimits | None = None) -> Extracted:
    """Extract ``archive`` into ``dest`` (an empty folder); ``name`` is the archive's name in the upload."""
    limits = limits or ArchiveLimits()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise IngestError(f"not a readable zip archive ({type(exc).__name__}); upload the folder or re-create the "
                          "archive.", name) from None
    with zf:
        entries = [info for info in zf.infolist() if not info.is_dir()]
        _check_archive(entries, limits, name)
        out = Extracted()
        dest = dest.resolve()
        for info in entries:
            entry_name = f"{name}/{info.filename}"
            reason = _unsafe(info, dest)
            if reason:
                out.errors.append(IngestError(reason, entry_name))
                continue
            if info.filename.lower().endswith(".zip"):
                out.skipped.append(SkippedObject(entry_name, "nested archive: not opened (upload it on its own)."))
                continue
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                written = _copy_limited(zf, info, target, limits.max_uncompressed_bytes - out.bytes_written, name)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
                target.unlink(missing_ok=True)
                out.errors.append(IngestError(f"entry could not be extracted ({type(exc).__name__}): the archive is "
                                              "damaged or uses an unsupported compression method.", entry_name))
                continue
            out.bytes_written += written
            out.files.append((target, entry_name))
        return out


def _check_archive(entries: list[zipfile.ZipInfo], limits: ArchiveLimits, name: str) -> None:
    if len(entries) > limits.max_entries:
        raise IngestError(f"archive has {len(entries)} files, the limit is {limits.max_entries}; split the upload.", name)
    declared = sum(info.file_size for info in entries)
    if declared > limits.max_uncompressed_bytes:
        raise IngestError(f"archive would expand to {declared / 2**30:.1f} GiB, the limit is "
                          f"{limits.max_uncompressed_bytes / 2**30:.1f} GiB (zip bomb or oversized upload).", name)
    compressed = sum(info.compress_size for info in entries)
    if declared > limits.min_ratio_check_bytes and declared / max(compressed, 1) > limits.max_ratio:
        raise IngestError(f"archive expands {declared / max(compressed, 1):.0f}-fold, the limit is "
                          f"{limits.max_ratio:.0f}-fold (zip bomb); it was not extracted.", name)
    for info in entries:
        if info.file_size > limits.min_ratio_check_bytes and info.file_size / max(info.compress_size, 1) > limits.max_ratio:
            raise IngestError(f"an entry expands {info.file_size / max(info.compress_size, 1):.0f}-fold, the limit is "
                              f"{limits.max_ratio:.0f}-fold (zip bomb); the archive was not extracted.", name)


def _unsafe(info: zipfile.ZipInfo, dest: Path) -> str | None:
    """Why an entry must not be extracted, or ``None``."""
    raw = info.filename.replace("\\", "/")
    parts = PurePosixPath(raw).parts
    if raw.startswith("/") or (parts and len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
        return "entry path escapes the archive folder (absolute path or '..'); it was not extracted."
    if stat.S_ISLNK(info.external_attr >> 16):
        return "entry is a symbolic link; links are not extracted."
    if info.flag_bits & 0x1:
        return "entry is encrypted; upload it without a password."
    target = (dest / PurePosixPath(raw)).resolve()
    if not target.is_relative_to(dest):
        return "entry path escapes the archive folder; it was not extracted."
    return None


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, name: str) -> int:
    """Inflate one entry, counting real bytes (zipfile also stops at the declared size and checks the CRC)."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > budget or written > info.file_size:
                dst.close()
                target.unlink(missing_ok=True)
                raise IngestError("archive expands beyond its declared size or the upload limit (zip bomb); "
                                  "extraction stopped.", name)
            dst.write(chunk)
    return written

