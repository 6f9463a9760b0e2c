"""The audit trail: one JSON line per event (sign-ins, studies opened, expert runs, answers with the model and
experts that produced them, report exports and downloads, PACS traffic, service starts with configuration and
model changes). Never pixel data, never PHI.

The study comes in de-identified already; what a user types could still carry an identifier, so free text
goes through ``scrub_text`` (dates, long digit runs, e-mail addresses and phone numbers are masked)
before it is written.

Tamper evidence: each line carries ``seq`` (1, 2, ...) and ``prev_sha256``, the SHA-256 of the previous line's
bytes, and ``LOG.head`` holds the last line's ``seq`` and SHA-256; ``verify_audit_log`` (``m3 audit verify``)
finds an edited, inserted or deleted line. The chain runs on across rotation: past ``max_bytes`` the log moves to
``LOG.1`` (``LOG.1`` to ``LOG.2``, ...), and files beyond ``keep_files`` are deleted. Writers in several processes
take an exclusive lock on ``LOG.lock`` around each append.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl  # the container is Linux; an advisory lock serialises writers in several processes
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from data.errors import M3Error

__all__ = ["AuditRecord", "AuditLog", "AuditError", "ChainReport", "scrub_text", "scrub_fields", "tool_call_records",
           "verify_audit_log", "export_audit_log", "log_files", "parse_time", "record_service_start", "GENESIS",
           "FREE_TEXT_FIELDS"]

GENESIS = "0" * 64  # prev_sha256 of the first record ever written
# fields of an event that may hold what someone typed: scrubbed before writing
FREE_TEXT_FIELDS = frozenset({"question", "answer", "text", "note", "notes", "message", "summary", "filters"})


class AuditError(M3Error):
    """The audit log cannot be written or read as asked (a bad date range, an unreadable file)."""

# Patterns masked in free text: e-mail, ISO / European / US dates, phone numbers, 6+ digit identifiers.
_SCRUB_PATTERNS = (
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "[email]"),
    (re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"), "[date]"),
    (re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"), "[date]"),
    (re.compile(r"\+?\d[\d ()-]{8,}\d"), "[number]"),
    (re.compile(r"\b\d{6,}\b"), "[number]"),
)


def scrub_text(text: str) -> str:
    """``text`` with e-mail addresses, dates, phone numbers and long digit runs masked."""
    for pattern, repl in _SCRUB_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def scrub_fields(value: Any) -> Any:
    """``value`` with every string inside it (dict values, list items) passed through ``scrub_text``."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub_fields(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_fields(v) for v in value]
    return value


@dataclass
class AuditRecord:
    """One answered question. ``tool_calls`` hold name, arguments, result JSON (``ExpertResult.to_json``),
    error and seconds; ``expert_versions`` maps expert name → version string."""

    user: str
    study_uid: str  # de-identified
    series_uid: str  # de-identified
    question: str
    answer: str
    model: str
    model_version: str = ""
    expert_versions: dict[str, str] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    event: str = "answer"  # answer | expert_run | report_export | ingest
    session: str = ""  # random per-browser-session id (not a person)
    routing: dict[str, Any] = field(default_factory=dict)  # which model answered and why (vlm.routing.RoutingDecision.to_json)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": self.event,
            "user": self.user,
            "session": self.session,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "question": scrub_text(self.question),
            "model": self.model,
            "model_version": self.model_version,
            "expert_versions": dict(self.expert_versions),
            "tool_calls": self.tool_calls,
            "answer": scrub_text(self.answer),
            "flags": list(self.flags),
            "seconds": round(float(self.seconds), 3),
            **({"routing": dict(self.routing)} if self.routing else {}),
        }


class AuditLog:
    """Appends hash-chained JSON lines to ``path`` (mode 0600), rotating past ``max_bytes`` and keeping
    ``keep_files`` rotated files. Thread- and process-safe (``LOG.lock``)."""

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = 100 * 2**20, keep_files: int = 20) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.keep_files = int(keep_files)
        self._lock = threading.Lock()

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    def write(self, record: AuditRecord) -> dict[str, Any]:
        """Append ``record``; returns the JSON object written (with ``seq`` and ``prev_sha256``)."""
        return self._append(record.to_json())

    def event(self, event: str, user: str = "", **fields: Any) -> dict[str, Any]:
        """Append an event other than an answer (``login``, ``logout``, ``download``, ``service_start``, ...):
        ``fields`` are JSON values written as given (addresses, de-identified UIDs, settings), except the free-text
        ones (``FREE_TEXT_FIELDS``), which are scrubbed (``scrub_fields``); returns the object written."""
        entry = {"time": _now(), "event": event, "user": user,
                 **{k: scrub_fields(v) if k in FREE_TEXT_FIELDS else v for k, v in fields.items()}}
        return self._append(entry)

    def read(self) -> list[dict[str, Any]]:
        """All records still kept, oldest first, across rotated files (for tests and the admin's review)."""
        return [json.loads(line) for _, line in _lines(log_files(self.path))]

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock, _exclusive(self.path.with_name(self.path.name + ".lock")):
            seq, prev = self._last()
            entry = {"seq": seq + 1, **entry, "prev_sha256": prev}
            line = json.dumps(entry, ensure_ascii=False, default=_json_default).encode()
            if self.path.exists() and self.path.stat().st_size and self.path.stat().st_size + len(line) + 1 > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")  # one write on an O_APPEND descriptor: no interleaving
            finally:
                os.close(fd)
            _write_head(self.head_path, entry["seq"], _sha256(line))
        return entry

    def _last(self) -> tuple[int, str]:
        """``(seq, sha256)`` of the last record: the current file's last line, else the head (after a rotation)."""
        head = _read_head(self.head_path)
        line = _last_line(self.path)
        if line:
            try:
                seq = int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                seq = -1  # a line without seq (an older log): continue from the head, the break stays visible
            if seq >= head[0]:
                return seq, _sha256(line)
        return head

    def _rotate(self) -> None:
        if self.keep_files < 1:
            self.path.unlink()
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.keep_files}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep_files - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


@dataclass
class ChainReport:
    """What ``verify_audit_log`` found: ``problems`` empty means every kept record is as written."""

    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def log_files(path: str | os.PathLike) -> list[Path]:
    """The log's files oldest first: ``LOG.N`` ... ``LOG.1``, ``LOG``."""
    path = Path(path)
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.name[len(path.name) + 1:].isdigit()]
    rotated.sort(key=lambda p: -int(p.name[len(path.name) + 1:]))
    return rotated + ([path] if path.exists() else [])


def verify_audit_log(path: str | os.PathLike) -> ChainReport:
    """Check the hash chain of every kept file of the log at ``path`` and its head; never raises for a broken chain
    (the report lists each break by file, line and ``seq``)."""
    path = Path(path)
    files = log_files(path)
    report = ChainReport(files=len(files))
    prev_line: bytes | None = None
    prev_seq = legacy = 0
    for file, number, line in _numbered_lines(files):
        where = f"{file.name} line {number}"
        try:
            record = json.loads(line)
            seq, claimed = int(record["seq"]), str(record["prev_sha256"])
        except (ValueError, KeyError, TypeError):
            if prev_line is None and _is_unchained_record(line):  # written before the log had a chain (an upgrade)
                legacy += 1
                continue
            report.problems.append(f"{where} is not an audit record (no seq / prev_sha256): edited or inserted")
            prev_line, prev_seq = line, prev_seq + 1
            continue
        if prev_line is None:
            report.first_seq = seq
            if seq == 1 and claimed != GENESIS:
                report.problems.append(f"{where} (seq 1) does not start the chain: records before it were removed")
            elif seq > 1:
                report.notes.append(f"the log starts at seq {seq}: older files were removed by retention (audit.keep_files)")
        else:
            if seq != prev_seq + 1:
                report.problems.append(f"{where}: seq {seq} follows seq {prev_seq}: "
                                       + ("records were deleted" if seq > prev_seq + 1 else "a record was inserted or reordered"))
            if claimed != _sha256(prev_line):
                report.problems.append(f"{where}: seq {seq} does not match the record before it (seq {prev_seq}): "
                                       "that record was edited, or this one was inserted")
        prev_line, prev_seq = line, seq
        report.records += 1
        report.last_seq = seq
    if legacy:
        report.notes.append(f"{legacy} record(s) at the start were written before the log had a hash chain (an older m3) "
                            "and cannot be verified")
    head_seq, head_sha = _read_head(path.with_name(path.name + ".head"))
    if head_seq and prev_line is None:
        report.problems.append(f"the head records {head_seq} record(s) but no record is left: the log was deleted")
    elif head_seq and prev_seq < head_seq:
        report.problems.append(f"the log ends at seq {prev_seq} but {head_seq} were written: the last records were deleted")
    elif head_seq and prev_seq == head_seq and prev_line is not None and _sha256(prev_line) != head_sha:
        report.problems.append(f"the last record (seq {prev_seq}) was edited after it was written")
    elif prev_seq > head_seq and head_seq:
        report.notes.append(f"the head is at seq {head_seq}, the log at {prev_seq}: a writer stopped between the two")
    return report


def export_audit_log(path: str | os.PathLike, since: _dt.datetime | None = None,
                     until: _dt.datetime | None = None) -> Iterator[bytes]:
    """The kept lines (bytes as written, so their hashes stay checkable) whose ``time`` is in ``[since, until)``
    (timezone-aware datetimes; ``None`` = open)."""
    for _, line in _lines(log_files(path)):
        try:
            when = parse_time(json.loads(line)["time"])
        except (ValueError, KeyError, TypeError, AuditError):
            continue  # not a record; `m3 audit verify` reports it
        if (since is None or when >= since) and (until is None or when < until):
            yield line


def parse_time(text: str, *, end_of_day: bool = False) -> _dt.datetime:
    """An ISO date or date-time as a UTC-aware datetime (naive = UTC); a bare date with ``end_of_day`` is the
    start of the next day, so ``--until 2025-01-31`` includes all of 31 January."""
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"dates must be ISO like 2025-01-31 or 2025-01-31T14:00:00+01:00, got {text!r}.") from None
    if end_of_day and len(text) == 10:
        when += _dt.timedelta(days=1)
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def record_service_start(audit: AuditLog, settings: dict[str, Any], models: dict[str, Any]) -> list[dict[str, Any]]:
    """Write ``service_start`` with the settings' SHA-256 and the models in use, preceded by ``config_change`` /
    ``model_change`` naming what differs from the previous start in this log. ``settings``: flat
    ``"section.key" → value`` without secrets; ``models``: ``{"chat_model": ..., "experts": {name: version}}``."""
    previous = _last_event(audit.path, "service_start")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    written = []
    if previous is not None:
        old = previous.get("settings", {})
        changed = {k: [old.get(k), settings.get(k)] for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
        if changed:
            written.append(audit.event("config_change", user="[service]", changed=changed))
        if previous.get("models") != models:
            written.append(audit.event("model_change", user="[service]", before=previous.get("models"), after=models))
    written.append(audit.event("service_start", user="[service]", settings_sha256=digest, settings=settings, models=models))
    return written


def tool_call_records(calls: Iterable[Any]) -> list[dict[str, Any]]:
    """``vlm.conversation.ToolCall`` objects → JSON-able dicts for an ``AuditRecord`` (no arrays)."""
    out = []
    for call in calls:
        result = getattr(call, "result", None)
        out.append(
            {
                "name": call.name,
                "arguments": dict(call.arguments or {}),
                "result": result.to_json() if result is not None else None,
                "error": call.error,
                "seconds": round(float(call.seconds or 0.0), 3),
            }
        )
    return out


def _json_default(value: Any) -> Any:
    # numpy scalars inside expert findings
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_head(path: Path) -> tuple[int, str]:
    try:
        head = json.loads(path.read_text())
        return int(head["seq"]), str(head["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, GENESIS


def _write_head(path: Path, seq: int, sha256: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"seq": seq, "sha256": sha256}) + "\n")
    os.replace(tmp, path)


def _last_line(path: Path) -> bytes:
    """The last non-empty line of ``path`` without its newline (read backwards in blocks), or ``b""``."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            data, pos = b"", end
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                stripped = data.rstrip(b"\n")
                if b"\n" in stripped:
                    return stripped.rsplit(b"\n", 1)[1]
            return data.rstrip(b"\n")
    except FileNotFoundError:
        return b""


def _numbered_lines(files: Iterable[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for file in files:
        with file.open("rb") as f:
            for number, raw in enumerate(f, 1):
                line = raw.rstrip(b"\n")
                if line.strip():
                    yield file, number, line


def _lines(files: Iterable[Path]) -> Iterator[tuple[Path, bytes]]:
    for file, _, line in _numbered_lines(files):
        yield file, line


def _last_event(path: Path, event: str) -> dict[str, Any] | None:
    """The newest kept record of ``event`` (lines are scanned newest file first; only matching lines are parsed)."""
    needle = f'"event": "{event}"'.encode()
    for file in reversed(log_files(path)):
        found = None
        for _, _, line in _numbered_lines([file]):
            if needle in line:
                found = line
        if found is not None:
            try:
                return json.loads(found)
            except ValueError:
                return None
    return None


def _is_unchained_record(line: bytes) -> bool:
    """A record as m3 wrote it before the hash chain: a JSON object with ``time`` and ``event`` but no ``seq``."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "time" in record and "event" in record and "seq" not in record
