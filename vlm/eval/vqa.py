"""Visual question answering scores (LLaVA-Med / VILA-M3 protocol) and the VQA files they run on.

Closed questions: exact match of the normalised answer (yes/no: the first yes/no word). Open questions:
recall of the reference's words. Two controls say whether closed answers read the picture at all:
``closed_prior_baseline`` (every question answered with its kind and category's most common reference
answer, no picture) and, from the harness, the same questions asked with another case's picture. ``load_vqa_file`` reads the phantom test files and the public sets
(VQA-RAD, SLAKE, PathVQA, through ``data.public``) into the same LLaVA records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vlm.eval.metrics import closed_match, open_recall

__all__ = ["VQAItem", "score_vqa", "prior_baseline", "load_vqa_file", "VQA_FORMATS"]

VQA_FORMATS = ("llava", "vqa-rad", "slake", "pathvqa")


@dataclass
class VQAItem:
    """One answered question. answer_type: "closed" | "open"; category: e.g. presence, count."""

    question: str
    reference: str
    prediction: str
    answer_type: str
    category: str = ""
    kind: str = ""
    expert: str = ""  # the expert the question is answered with ("" for a picture question)
    called: list[str] = field(default_factory=list)  # the experts the model called
    arguments: list[dict] = field(default_factory=list)  # the arguments of each call, as run


def score_vqa(items: Iterable[VQAItem]) -> dict:
    """``closed_accuracy`` (exact match), ``open_recall`` (mean word recall), counts, both per category
    and per image kind, ``closed_prior_baseline`` (``prior_baseline``), and the closed accuracy split into
    questions answered from the picture and questions answered with an expert (with how often the model
    called the expert those need)."""
    items = list(items)
    closed = [closed_match(i.prediction, i.reference) for i in items if i.answer_type == "closed"]
    opened = [open_recall(i.prediction, i.reference) for i in items if i.answer_type != "closed"]
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in items:
        value = float(closed_match(i.prediction, i.reference)) if i.answer_type == "closed" else open_recall(i.prediction, i.reference)
        groups["category"][f"{i.category or 'all'} ({i.answer_type})"].append(value)
        if i.kind:
            groups["kind"][f"{i.kind} ({i.answer_type})"].append(value)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "closed_accuracy": mean([float(c) for c in closed]), "open_recall": mean(opened),
        "n_closed": len(closed), "n_open": len(opened), "closed_prior_baseline": prior_baseline(items),
        **_split_by_source([i for i in items if i.answer_type == "closed"], mean),
        "by_category": {k: {"score": mean(v), "n": len(v)} for k, v in sorted(groups["category"].items())},
        "by_kind": {k: {"score": mean(v), "n": len(v)} for k, v in sorted(groups["kind"].items())},
    }


def _split_by_source(closed: list[VQAItem], mean: Any) -> dict[str, Any]:
    picture = [float(closed_match(i.prediction, i.reference)) for i in closed if not i.expert]
    routed = [i for i in closed if i.expert]
    return {"closed_accuracy_from_picture": mean(picture), "n_closed_from_picture": len(picture),
            "closed_accuracy_with_expert": mean([float(closed_match(i.prediction, i.reference)) for i in routed]),
            "n_closed_with_expert": len(routed), "closed_expert_called": mean([float(i.expert in i.called) for i in routed])}


def prior_baseline(items: Iterable[VQAItem]) -> float | None:
    """Closed accuracy of a blind answerer that knows each question's image kind and category and gives
    that group's most common reference answer among these items: what the question alone earns. (The
    most common answer is counted on the scored items themselves, so this is the best such answerer.)"""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i in items:
        if i.answer_type == "closed":
            groups[(i.kind, i.category)].append(i.reference)
    n = sum(len(v) for v in groups.values())
    best = sum(max(v.count(a) for a in set(v)) for v in groups.values())
    return best / n if n else None


def load_vqa_file(path: str | Path, fmt: str = "llava", image_root: str | Path | None = None) -> list[dict]:
    """LLaVA records with ``meta.answer_type`` and ``meta.answer`` from a VQA file.

    fmt: ``llava`` (the project's JSON, e.g. ``ift_test.json``), ``vqa-rad``, ``slake`` or ``pathvqa``
    (the sets' released files, read by ``data.public``); image paths are made absolute.
    """
    path = Path(path).resolve()
    if fmt == "llava":
        records = json.loads(path.read_text())
        for r in records:
            for key in ("image", "images"):
                if key in r:
                    r[key] = str(path.parent / r[key]) if isinstance(r[key], str) else [str(path.parent / p) for p in r[key]]
        return records
    from data.public import load_pathvqa, load_slake, load_vqa_rad

    loaders = {"vqa-rad": load_vqa_rad, "slake": load_slake, "pathvqa": load_pathvqa}
    if fmt not in loaders:
        raise ValueError(f"VQA file format must be one of {VQA_FORMATS}, got {fmt!r}.")
    return loaders[fmt](path, image_root)
