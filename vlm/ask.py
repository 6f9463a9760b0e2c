"""``m3 ask``: a site's own questions about one study, each asked as a clinician would in the app.

Every question runs in a fresh conversation through ``vlm.study_chat.StudyChat`` — the picture, agent, experts
and generation settings of the app — optionally at a slice and plane as the viewer shows them (``slice`` counts
from 1, like the viewer's slider). One JSON line per question: the answer, every expert call with its arguments,
result and error, the agent's flags, the latency and, when the question file says what to expect, whether the
answer met it. Hospitals use it for acceptance checks on their own question lists.

A question line: ``{"question": "What is the liver volume?", "id": "q1", "slice": 40, "plane": "axial",
"expect_expert": "ct_segmentation", "expect": "mL"}`` (only ``question`` is required; ``expect`` is a piece of
text the answer must contain, case-insensitive; ``expect_expert`` an expert that must be called).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data.display import PLANES, native_axial_index
from data.errors import M3Error
from vlm.study_chat import StudyChat, TurnSettings

__all__ = ["AskQuestion", "AskError", "load_questions", "ask_questions", "summarise_answers"]


class AskError(M3Error, ValueError):
    """A question file that cannot be read (message: the line, what was expected, what was found)."""


@dataclass(frozen=True)
class AskQuestion:
    """One line of a question file."""

    question: str
    id: str = ""
    slice: int | None = None  # as the viewer counts: 1 … number of slices in ``plane``
    plane: str = "axial"
    expect: str = ""  # text the answer must contain (case-insensitive); "" = not checked
    expect_expert: str = ""  # an expert the answer must call; "" = not checked


def load_questions(path: str | Path) -> list[AskQuestion]:
    """The questions of a JSON-lines file (blank lines and lines starting with ``#`` skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AskError(f"question file {path} cannot be read ({exc.strerror or exc}); give a JSON-lines file.") from None
    known = set(AskQuestion.__dataclass_fields__)
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise AskError(f"{path.name} line {n}: expected one JSON object per line, found invalid JSON ({exc.msg}).") from None
        if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not record["question"].strip():
            raise AskError(f"{path.name} line {n}: each line must be an object with a non-empty \"question\", got {line[:80]!r}.")
        unknown = sorted(set(record) - known)
        if unknown:
            raise AskError(f"{path.name} line {n}: unknown key(s) {unknown}; keys are {sorted(known)}.")
        if record.get("plane", "axial") not in PLANES:
            raise AskError(f"{path.name} line {n}: plane must be one of {PLANES}, got {record['plane']!r}.")
        if record.get("slice") is not None and (not isinstance(record["slice"], int) or record["slice"] < 1):
            raise AskError(f"{path.name} line {n}: slice must be a whole number >= 1 (the viewer's count), got {record['slice']!r}.")
        out.append(AskQuestion(**{**record, "id": str(record.get("id", n))}))
    if not out:
        raise AskError(f"question file {path} holds no questions; write one JSON object per line with a \"question\".")
    return out


def ask_questions(backend: Any, registry: Any, study: Any, questions: list[AskQuestion], *,
                  settings: TurnSettings | None = None, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Ask each question in a fresh conversation on ``study``; yield one JSON-able record per question."""
    from tqdm import tqdm

    volume = study.series[0].volume if study.series else None
    for q in tqdm(questions, desc="m3 ask", unit="question", disable=not progress):
        chat = StudyChat(backend, registry, study, settings=settings)
        k, on_screen = _model_slice(volume, q)
        chat.look_at(k, on_screen=on_screen)
        t0 = time.perf_counter()
        turn = chat.ask(q.question)
        called = [c.name for c in turn.tool_calls]
        record: dict[str, Any] = {
            "id": q.id, "question": q.question, "slice": q.slice, "plane": q.plane, "answer": turn.answer,
            "tool_calls": [{"name": c.name, "arguments": c.arguments, "repairs": c.repairs, "error": c.error,
                            "result": c.result.to_json() if c.result is not None else None, "seconds": round(c.seconds, 3)}
                           for c in turn.tool_calls],
            "flags": list(turn.flags), "seconds": round(time.perf_counter() - t0, 3),
        }
        checks = []
        if q.expect:
            checks.append(q.expect.lower() in turn.answer.lower())
        if q.expect_expert:
            checks.append(q.expect_expert in called)
        record["passed"] = all(checks) if checks else None
        yield record


def summarise_answers(records: list[dict[str, Any]]) -> str:
    """A Markdown table: questions, with expectations, passed, flagged, expert errors, median and worst latency."""
    import statistics

    checked = [r for r in records if r["passed"] is not None]
    seconds = [r["seconds"] for r in records] or [0.0]
    rows = [("questions", str(len(records))),
            ("with expectations", str(len(checked))),
            ("met their expectations", f"{sum(r['passed'] for r in checked)} / {len(checked)}" if checked else "—"),
            ("answers with flags", str(sum(bool(r["flags"]) for r in records))),
            ("expert calls that failed", str(sum(bool(c["error"]) for r in records for c in r["tool_calls"]))),
            ("median / slowest answer (s)", f"{statistics.median(seconds):.2f} / {max(seconds):.2f}")]
    return "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def _model_slice(volume: Any, q: AskQuestion) -> tuple[int | None, bool]:
    """(axial slice on the volume's own third axis, whether it is on screen) for a question's slice and plane,
    as the app's viewer gives them; another plane leaves the model on the middle axial slice."""
    if volume is None or volume.is_2d or q.slice is None or q.plane != "axial":
        return None, q.plane == "axial"
    if q.slice > volume.shape[2]:
        raise AskError(f"question {q.id}: slice must be 1 … {volume.shape[2]} for this study's axial plane, got {q.slice}.")
    return native_axial_index(volume, q.slice - 1), True
