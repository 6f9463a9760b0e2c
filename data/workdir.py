"""Private temporary folders for raw (identified) upload files, their clean-up, and disk errors.

Ingest extracts archives and inflates compressed files (and a PACS retrieval may write its files) into
a folder made by :func:`ingest_workdir`:
mode 0700 in the system temporary folder (``$TMPDIR``), named ``m3-ingest-<pid>-<start>-<random>``
after the process that owns it, and removed on every way out of the ``with`` block. A process killed
with ``kill -9`` (or by the out-of-memory killer) cannot clean up; :func:`sweep_stale_ingest_dirs`,
called at start-up and periodically, removes every such folder whose owner is gone.

:func:`disk_error` turns the server's own storage problems (disk full, read-only or missing temporary
folder) into an :class:`IngestError` an administrator can act on.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from data.errors import IngestError

__all__ = ["ingest_workdir", "sweep_stale_ingest_dirs", "disk_error", "WORKDIR_PREFIXES"]

WORKDIR_PREFIXES = ("m3-ingest-", "m3-deid-", "m3-pacs-")
_OWNED = re.compile(r"^m3-(?:ingest|deid|pacs)-(\d+)-(\d+)-")
_IN_USE_WITHOUT_OWNER = ("m3-pacs-",)  # made by code that does not name the owner yet: only the age tells
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR}


@contextmanager
def ingest_workdir(prefix: str = "m3-ingest-") -> Iterator[Path]:
    """A new 0700 folder in the system temporary folder, named after this process; removed on exit.

    ``prefix`` must be one of :data:`WORKDIR_PREFIXES` (so the sweep finds leftovers). A failure to
    create it (disk full, read-only temporary folder) raises :class:`IngestError`.
    """
    if prefix not in WORKDIR_PREFIXES:
        raise ValueError(f"prefix must be one of {WORKDIR_PREFIXES}, got {prefix!r}.")
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{_start_ticks(os.getpid()) or 0}-"))
    except OSError as exc:
        raise disk_error(exc, writable_error=True) or _not_writable(exc) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale_ingest_dirs(max_age_s: float = 24 * 3600.0, *, tmp_dir: str | os.PathLike | None = None) -> int:
    """Remove leftover ingest folders (raw upload files) from the system temporary folder.

    A folder goes when the process that made it has ended (its pid is gone, or now belongs to a
    process started at another time), when it is an ingest folder whose name carries no owner (made
    by an older version), or when it is older than ``max_age_s`` seconds whatever its owner. Folders of
    running ingests stay. Call it at start-up and then periodically. Returns the number removed.
    """
    root = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    removed, now = 0, time.time()
    for entry in entries:
        if not entry.name.startswith(WORKDIR_PREFIXES):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        owner = _OWNED.match(entry.name)
        if owner is not None:
            in_use = _alive(int(owner.group(1)), int(owner.group(2)))
        else:
            in_use = entry.name.startswith(_IN_USE_WITHOUT_OWNER)
        if in_use and age <= max_age_s:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += not os.path.lexists(entry.path)
    return removed


def disk_error(exc: OSError, *, writable_error: bool = False) -> IngestError | None:
    """The :class:`IngestError` for a storage problem of the server (disk full; with ``writable_error``
    also a read-only or missing temporary folder), else ``None`` (a problem of one uploaded file)."""
    where = tempfile.gettempdir()
    if exc.errno in _DISK_FULL:
        return IngestError(f"the server's temporary disk ({where}) is full ({errno.errorcode.get(exc.errno, exc.errno)}); "
                           "nothing of this upload was kept: ask the administrator to free space or give m3 a larger "
                           "temporary folder (TMPDIR), then upload again.")
    if writable_error and exc.errno in _NOT_WRITABLE:
        return _not_writable(exc)
    return None


def _not_writable(exc: OSError) -> IngestError:
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    return IngestError(f"the server's temporary folder ({tempfile.gettempdir()}) cannot be written ({code}); "
                       "nothing of this upload was kept: ask the administrator to make it writable for m3 or point "
                       "TMPDIR at a writable folder, then upload again.")


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, Linux ``/proc``), or ``None`` where unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid`` from Linux ``/proc``, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            stat = fp.read()
        fields_after_comm = stat[stat.rindex(b")") + 2:].split()  # fields 3... ("pid (comm)" may hold spaces)
        return fields_after_comm[0].decode(), int(fields_after_comm[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: int) -> bool:
    """Whether the process that made a folder (``pid`` started at ``start`` ticks) still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, trust it (the age limit still applies)
    state, started = stat
    return state != "Z" and (start == 0 or started == start)  # a zombie, or a reused pid started at another time
