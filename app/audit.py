"""The audit trail: one JSON line per answer (who, which de-identified study, what was asked, which model
and experts, what they returned, what was answered). Never pixel data, never PHI.

The study comes in de-identified already; what a user types could still carry an identifier, so free text
goes through ``scrub_text`` (dates, long digit runs, e-mail addresses and phone numbers are masked)
before it is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["AuditRecord", "AuditLog", "scrub_text", "tool_call_records"]

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
        }


class AuditLog:
    """Appends ``AuditRecord`` lines to ``path`` (created with mode 0600). Thread-safe; each line is written
    with one ``write`` on an ``O_APPEND`` descriptor, so processes sharing a file do not interleave."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> dict[str, Any]:
        """Append ``record``; returns the JSON object written."""
        entry = record.to_json()
        line = (json.dumps(entry, ensure_ascii=False, default=_json_default) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return entry

    def read(self) -> list[dict[str, Any]]:
        """All records so far (for tests and the admin's review)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


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

