"""Stage 4 — ``m3 train medical-ift``: specialised medical instruction tuning with expert conversations.

Each conversation asks something only an expert can answer; the model learns to write the tool call
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), reads the tool message (the one template
``experts.base.tool_message``, as the agent writes it at inference), and answers quoting the expert's
numbers; follow-ups are answered from the same result, and some questions need no expert at all.
VQA and captions are mixed in so the earlier skills stay. Full fine-tuning or LoRA per the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm.train.run_folder import previous_model
from vlm.train.recipes import Recipe
from vlm.train.stages import run_stage

__all__ = ["run_medical_ift"]


def run_medical_ift(recipe: Recipe, out: str | Path, *, init: str | Path | None = None, resume: bool = False, force: bool = False,
                    overrides: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Fine-tune from ``init`` (default: the ``ift`` result in ``out``); returns the final model folder."""
    start = Path(init) if init else previous_model(out, "medical-ift")
    return run_stage("medical-ift", recipe, out, start, resume=resume, force=force, overrides=overrides, progress=progress)
