"""SLAKE (Liu et al. 2021): ``train.json`` / ``validate.json`` / ``test.json`` → LLaVA records.

Each file is a JSON list of entries with ``qid``, ``img_id``, ``img_name`` (relative to ``imgs/``, e.g.
``xmlab102/source.jpg``), ``question``, ``answer``, ``q_lang`` (``en`` / ``zh``), ``answer_type``
(``OPEN`` / ``CLOSED``), ``modality``, ``location``, ``content_type``, ``base_type``, ``triple``.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.public.records import PublicFormatError, normalise_answer_type, vqa_record

__all__ = ["load_slake"]

_REQUIRED = ("img_name", "question", "answer")


def load_slake(json_path: str | Path, image_root: str | Path | None = None, *, language: str | None = "en") -> list[dict]:
    """Records of one SLAKE split file. image_root: default ``imgs`` beside the JSON; language: keep only
    questions in this ``q_lang`` (None keeps all)."""
    path = Path(json_path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PublicFormatError(f"{path.name}: could not be read as JSON ({exc.__class__.__name__}) → expected a SLAKE split file.") from None
    if not isinstance(entries, list):
        raise PublicFormatError(f"{path.name}: expected a JSON list of questions, found {type(entries).__name__}.")
    root = Path(image_root) if image_root is not None else path.parent / "imgs"
    out = []
    for n, e in enumerate(entries):
        missing = [k for k in _REQUIRED if k not in e]
        if missing:
            raise PublicFormatError(f"{path.name}: entry {n} → expected fields {list(_REQUIRED)} → missing {missing} → is this a SLAKE split file?")
        if language is not None and e.get("q_lang", "en") != language:
            continue
        answer = str(e["answer"]).strip()
        out.append(vqa_record(
            f"slake-{e.get('qid', n)}", root / str(e["img_name"]), e["question"], answer,
            normalise_answer_type(e.get("answer_type"), answer), "slake",
            language=e.get("q_lang", ""), modality=e.get("modality", ""), location=e.get("location", ""),
            content_type=e.get("content_type", ""),
        ))
    return out
