"""The embedded default model (vlm/weights/default): small, documented, loadable; and, under ``slow``,
measured against the quality bars on phantoms it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlm

DEFAULT = Path(vlm.__file__).parent / "weights" / "default"


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def test_default_model_is_small_documented_and_loads():
    from vlm.backends import load_backend

    assert (DEFAULT / "config.json").is_file(), "the default model is missing: run `m3 train all --recipe tiny --install-default`"
    assert _size_mb(DEFAULT) <= 25.0
    card = (DEFAULT / "model_card.md").read_text()
    assert "demonstration model trained on synthetic phantoms, not for clinical use" in card
    assert "m3 train all --recipe tiny" in card
    recipe = json.loads((DEFAULT / "recipe.json").read_text())
    assert recipe["name"] == "tiny"
    backend = load_backend(DEFAULT)
    assert backend.model.tokens_per_image == (recipe["model"]["image_size"] // 32) ** 2


@pytest.mark.slow
def test_default_model_meets_the_bars_on_unseen_phantoms(tmp_path):
    """Closed-question accuracy ≥ 0.90, expert-call precision / recall ≥ 0.95, report finding F1 ≥ 0.85,
    answers quoting the experts' numbers, on a fresh test split (seed block 7: never used in training)."""
    from data.instructions import build_datasets
    from vlm.eval.harness import evaluate_model
    from vlm.eval.tables import TARGETS

    build_datasets({"ct": 12, "mri": 12, "cxr": 12}, tmp_path / "data", seed=7, split="test", questions_per_case=4)
    report = evaluate_model(DEFAULT, tmp_path / "data", tmp_path / "eval", experts="auto", progress=False)
    missed = {k: report["headline"][k] for k, t in TARGETS.items() if (report["headline"][k] or 0) < t}
    assert not missed, f"bars not met: {missed}"
