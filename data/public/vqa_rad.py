"""VQA-RAD (Lau et al. 2018): ``VQA_RAD Dataset Public.json`` → LLaVA records.

The file is a JSON list; each entry has ``qid``, ``image_name`` (a file in ``VQA_RAD Image Folder``),
``question``, ``answer`` (string or number), ``answer_type`` (``CLOSED`` / ``OPEN``, sometimes with
stray spaces), ``question_type``, ``image_organ`` and ``phrase_type`` (``freeform`` / ``para`` /
``test_freeform`` / ``test_para``: the test split is the ``test_*`` phrase types).
"""

from __future__ import annotations

import json
from pathlib import Path

from data.public.records import PublicFormatError, normalise_answer_type, vqa_record

__all__ = ["load_vqa_rad"]

_REQUIRED = ("image_name", "question", "answer")


def load_vqa_rad(json_path: str | Path, image_root: str | Path | None = None, *, split: str | None = None) -> list[dict]:
    """Records of a VQA-RAD JSON file. image_root: the image folder (default: ``VQA_RAD Image Folder``
    beside the JSON); split: "train", "test" or None for all (by ``phrase_type``)."""
    path = Path(json_path)
    entries = _read(path)
    root = Path(image_root) if image_root is not None else path.parent / "VQA_RAD Image Folder"
    out = []
    for n, e in enumerate(entries):
        missing = [k for k in _REQUIRED if k not in e]
        if missing:
            raise PublicFormatError(f"{path.name}: entry {n} → expected fields {list(_REQUIRED)} → missing {missing} → is this the VQA-RAD public JSON?")
        is_test = str(e.get("phrase_type", "")).startswith("test")
        if split == "test" and not is_test or split == "train" and is_test:
            continue
        answer = str(e["answer"]).strip()
        out.append(vqa_record(
            f"vqa-rad-{e.get('qid', n)}", root / str(e["image_name"]), e["question"], answer,
            normalise_answer_type(e.get("answer_type"), answer), "vqa-rad",
            question_type=str(e.get("question_type", "")).strip(), organ=str(e.get("image_organ", "")).strip(),
            split="test" if is_test else "train",
        ))
    return out


def _read(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PublicFormatError(f"{path.name}: could not be read as JSON ({exc.__class__.__name__}) → expected the VQA-RAD JSON list.") from None
    if not isinstance(data, list):
        raise PublicFormatError(f"{path.name}: expected a JSON list of questions, found {type(data).__name__}.")
    return data
