"""The one LLaVA record shape every public loader returns (same as the phantom generators write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.errors import M3Error

__all__ = ["vqa_record", "normalise_answer_type", "PublicFormatError"]


class PublicFormatError(M3Error, ValueError):
    """A public VQA file that does not have the expected format; the message names the file and field."""


def normalise_answer_type(raw: Any, answer: str) -> str:
    """``closed`` or ``open``: the file's own label when it has one, else yes/no answers are closed."""
    text = str(raw or "").strip().upper()
    if text in ("CLOSED", "OPEN"):
        return text.lower()
    return "closed" if answer.strip().lower() in ("yes", "no") else "open"


def vqa_record(rid: str, image: str | Path, question: str, answer: str, answer_type: str, source: str, **meta: Any) -> dict:
    """``{"id", "image", "conversations": [human with <image>, gpt], "meta"}`` for one question."""
    answer = str(answer).strip()
    return {
        "id": rid,
        "image": str(image),
        "conversations": [{"from": "human", "value": "<image>\n" + str(question).strip()}, {"from": "gpt", "value": answer}],
        "meta": {"source": source, "task": "vqa", "answer_type": answer_type, "answer": answer, **meta},
    }
