"""Stage 3 — ``m3 train ift``: instruction fine-tuning on visual questions (closed and open: presence,
location, laterality, count, size, modality, region, comparison) mixed with captions, so the
report-writing of ``align`` is not forgotten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm.train.run_folder import previous_model
from vlm.train.recipes import Recipe
from vlm.train.stages import run_stage

__all__ = ["run_ift"]


def run_ift(recipe: Recipe, out: str | Path, *, init: str | Path | None = None, resume: bool = False, force: bool = False,
            overrides: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Fine-tune from ``init`` (default: the ``align`` result in ``out``); returns the final model folder."""
    start = Path(init) if init else previous_model(out, "ift")
    return run_stage("ift", recipe, out, start, resume=resume, force=force, overrides=overrides, progress=progress)
