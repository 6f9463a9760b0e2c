"""Stage 2 — ``m3 train align``: projector alignment, then vision-language pretraining.

Phase ``align_projector`` trains the projector alone on image–caption pairs (tower and LM frozen), so
the new image tokens land in the LM's embedding space before the LM moves; phase ``align`` then trains
the projector and the LM (and the tower, when the recipe says so) on captions and short reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm.train.run_folder import prepare
from vlm.train.recipes import Recipe
from vlm.train.stages import run_stage

__all__ = ["run_align"]


def run_align(recipe: Recipe, out: str | Path, *, init: str | Path | None = None, resume: bool = False, force: bool = False,
              overrides: dict[str, Any] | None = None, progress: bool = True, encoder: str | Path | None = None) -> Path:
    """Run both align phases; ``init`` defaults to the freshly assembled model of the recipe
    (``<out>/init``, built with its data and tokenizer if missing; its tower from ``encoder``, else the run's
    stage-1 result, else ``recipe.model.encoder_path``). ``force``: train again (and assemble ``init`` again).
    Returns the final model folder."""
    start = Path(init) if init else prepare(recipe, out, encoder=encoder, force=force, progress=progress)
    return run_stage("align", recipe, out, start, resume=resume, force=force, overrides=overrides, progress=progress)
