"""Safe extraction of uploaded ``.zip`` archives.

Checks, before and while extracting: the number of entries, the total uncompressed size and the
compression ratio (zip bombs; the sizes written in the archive are not trusted, bytes are counted as
they are inflated), entries that would land outside the target folder (absolute paths, ``..``, drive
letters, symbolic links), encrypted entries, nested archives, names too long or too deep for the
file system and names that clash (the same name twice, a file ``a`` and an entry ``a/b``). An
archive-level problem raises :class:`IngestError`; a bad entry becomes one ``IngestError`` in the
returned list and the rest is extracted. Nothing else escapes: damaged data (``zlib.error``,
``LZMAError``, ...) is a bad entry, and the server's disk filling up raises for the whole upload.
"""

from __future__ import annotations

import contextlib
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from data.errors import IngestError
from data.limits import ArchiveLimits
from data.study import SkippedObject
from data.workdir import disk_error

__all__ = ["ArchiveLimits", "Extracted", "extract_zip"]

_CHUNK = 1 << 20
_MAX_DEPTH = 64  # folders in one entry's path


@dataclass
class Extracted:
    """What came out of an archive: ``(path on disk, name in the upload)`` pairs and per-entry outcomes."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    errors: list[IngestError] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)
    bytes_written: int = 0


def extract_zip(archive: Path, dest: Path, name: str, limits: ArchiveLimits | None = None) -> Extracted:
    """Extract ``archive`` into ``dest`` (an empty folder); ``name`` is the archive's name in the upload.

    A bad entry (unsafe path, name clash, damaged data) is one error in the result; the server's own
    storage failing (disk full) raises :class:`IngestError` for the whole upload.
    """
    limits = limits or ArchiveLimits()
    try:
        zf = zipfile.ZipFile(archive)
        entries = [info for info in zf.infolist() if not info.is_dir()]
    except Exception as exc:  # zipfile raises many types on damaged central directories; each means "unreadable"
        raise IngestError(f"not a readable zip archive ({type(exc).__name__}); upload the folder or re-create the "
                          "archive.", name) from None
    with zf:
        _check_archive(entries, limits, name)
        out = Extracted()
        dest = dest.resolve()
        files: set[str] = set()  # extracted paths, relative to dest
        folders: set[str] = set()  # their parent folders
        for info in entries:
            entry_name = f"{name}/{info.filename}"
            reason = _unsafe(info, dest)
            if reason:
                out.errors.append(IngestError(reason, entry_name))
                continue
            if info.filename.lower().endswith(".zip"):
                out.skipped.append(SkippedObject(entry_name, "nested archive: not opened (upload it on its own)."))
                continue
            relative = PurePosixPath(info.filename.replace("\\", "/"))
            clash = _clash(relative, files, folders)
            if clash:
                out.errors.append(IngestError(clash, entry_name))
                continue
            target = dest / relative
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                written = _copy_limited(zf, info, target, limits.max_uncompressed_bytes - out.bytes_written, name)
            except _DamagedEntry as exc:
                _remove(target)
                out.errors.append(IngestError(f"entry could not be extracted ({exc}): the archive is damaged or uses "
                                              "an unsupported compression method.", entry_name))
                continue
            except OSError as exc:
                _remove(target)
                problem = disk_error(exc)
                if problem is not None:
                    raise problem from None
                out.errors.append(IngestError(f"entry could not be written ({type(exc).__name__}): its name cannot be "
                                              "used on this server or clashes with another entry; rename it and "
                                              "re-create the archive.", entry_name))
                continue
            files.add(relative.as_posix())
            folders.update(parent.as_posix() for parent in relative.parents)
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
    if not parts or parts == (".",):
        return "entry has no file name; it was not extracted."
    if len(parts) > _MAX_DEPTH or any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in parts):
        return (f"entry path is too deep (over {_MAX_DEPTH} folders) or has a name over 255 bytes; it was not "
                "extracted: shorten it and re-create the archive.")
    try:
        target = (dest / PurePosixPath(raw)).resolve()
    except (OSError, RuntimeError, ValueError):
        return "entry path cannot be used on this server (too long or invalid); it was not extracted."
    if not target.is_relative_to(dest) or target == dest:
        return "entry path escapes the archive folder; it was not extracted."
    return None


def _clash(relative: PurePosixPath, files: set[str], folders: set[str]) -> str | None:
    """Why an entry's path collides with one already extracted (same name, or a file where a folder
    must be, or a folder where a file is), or ``None``."""
    path = relative.as_posix()
    if path in files:
        return "another entry has the same name; only the first was extracted."
    if any(parent.as_posix() in files for parent in relative.parents):
        return "entry lies under a name that is a file in the archive; it was not extracted."
    if path in folders:
        return "entry has the name of a folder in the archive; it was not extracted."
    return None


def _remove(target: Path) -> None:
    with contextlib.suppress(OSError):  # a folder of that name: nothing of ours to remove
        target.unlink(missing_ok=True)


class _DamagedEntry(Exception):
    """Reading (inflating) an entry failed: the archive's data, not the server's disk."""


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, name: str) -> int:
    """Inflate one entry, counting real bytes (zipfile also stops at the declared size and checks the CRC).

    Failures reading the entry raise :class:`_DamagedEntry`; failures writing it, ``OSError``.
    """
    written = 0
    try:
        src = zf.open(info)
    except Exception as exc:  # bad local header, unsupported method, encryption: zipfile raises many types
        raise _DamagedEntry(type(exc).__name__) from None
    with src, open(target, "wb") as dst:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except Exception as exc:  # zlib.error, LZMAError, OSError (bzip2), BadZipFile (CRC), EOFError, ...
                raise _DamagedEntry(type(exc).__name__) from None
            if not chunk:
                break
            written += len(chunk)
            if written > budget or written > info.file_size:
                dst.close()
                target.unlink(missing_ok=True)
                raise IngestError("archive expands beyond its declared size or the upload limit (zip bomb); "
                                  "extraction stopped.", name)
            dst.write(chunk)
    return written
