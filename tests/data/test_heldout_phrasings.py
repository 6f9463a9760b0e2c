"""The held-out clinician phrasing set stays what it was when written: frozen by hash, broad enough to judge
language coverage, disjoint from what the training-data generators produce, and read by no generator."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SET_PATH = ROOT / "tests" / "data" / "heldout_phrasings.jsonl"
HASH_PATH = SET_PATH.with_suffix(".sha256")
STUDIES = {"ct", "mri", "cxr"}


def _items() -> list[dict]:
    return [json.loads(line) for line in SET_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _normalised(text: str) -> str:
    """Lower case, punctuation to spaces, the image placeholder dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.replace("<image>", " ").lower()).split())


def test_set_is_frozen():
    frozen = HASH_PATH.read_text().split()[0]
    actual = hashlib.sha256(SET_PATH.read_bytes()).hexdigest()
    assert actual == frozen, (
        f"{SET_PATH.name} has SHA-256 {actual}, frozen as {frozen}: this set is frozen. A change needs a new versioned "
        f"file (heldout_phrasings_v2.jsonl with its own .sha256) and a note in the model card; do not edit this one.")


def test_set_is_broad_enough():
    items = _items()
    for n, item in enumerate(items, 1):
        assert {"intent", "study", "target", "phrasing", "style"} <= set(item), f"line {n} lacks a field: {item}"
        assert item["study"] in STUDIES and item["phrasing"].strip(), f"line {n}: study must be one of {STUDIES}: {item}"
        if item["intent"] == "multi_part":
            assert len(item.get("parts", [])) >= 2, f"line {n}: a multi_part item lists its parts: {item}"
    per_intent = Counter(item["intent"] for item in items)
    assert len(per_intent) >= 25, f"the set must cover >= 25 intents, got {len(per_intent)}"
    thin = {intent: n for intent, n in per_intent.items() if n < 12}
    assert not thin, f"every intent needs >= 12 phrasings, got {thin}"
    assert len({item["style"] for item in items}) >= 5
    phrasings = Counter(_normalised(item["phrasing"]) for item in items)
    assert not [p for p, n in phrasings.items() if n > 1], "a phrasing appears twice"


def test_no_phrasing_appears_in_generated_training_data(tmp_path):
    from data.instructions import build_datasets

    build_datasets({"ct": 3, "mri": 3, "cxr": 3}, tmp_path, seed=0, split="train", questions_per_case=8)
    seen = set()
    for path in tmp_path.rglob("*_train.json"):
        for record in json.loads(path.read_text()):
            for turn in record["conversations"]:
                if turn["from"] == "human":
                    pieces = [turn["value"], *turn["value"].splitlines(), *re.split(r"(?<=[.?!])\s+|\n", turn["value"])]
                    seen |= {_normalised(p) for p in pieces}
    assert len(seen) > 20, "the generators wrote too few questions for this check to mean anything"
    leaked = [item["phrasing"] for item in _items() if _normalised(item["phrasing"]) in seen]
    assert not leaked, f"held-out phrasings found verbatim in generated training data: {leaked}"


def test_no_generator_reads_the_set():
    # the evaluation package is the set's one reader (m3 eval scores it); training data, experts and the model never see it
    readers = []
    for package in ("data", "experts", "vlm"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(ROOT / "vlm" / "eval"):
                continue
            if "heldout_phrasings" in path.read_text(encoding="utf-8", errors="replace"):
                readers.append(str(path.relative_to(ROOT)))
    assert not readers, f"only vlm/eval may name the held-out set; found it in {readers}"
