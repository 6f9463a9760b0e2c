"""A training run's folder: the data and fresh model it starts from (``prepare``), and where each stage's finished
model lies (``stage_final``, ``previous_model``). The stages (``align``, ``ift``, ``medical_ift``) and the whole
pipeline (``vlm.train.pipeline``) both read it, so neither imports the other's module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vlm.train.build import TrainError, build_data, build_model, build_tokenizer
from vlm.train.recipes import Recipe
from vlm.train.stages import STAGE_PHASES
from vlm.train.vision import VisionStageConfig, run_vision_stage

__all__ = ["prepare", "stage_final", "previous_model"]

_PREVIOUS = {"ift": "align", "medical-ift": "ift"}


def prepare(recipe: Recipe, out: str | Path, *, progress: bool = True) -> Path:
    """Build the recipe's data (``<out>/data``) and its freshly assembled model (``<out>/init``: trained
    tokenizer, tower, projector, LM from config); returns the model folder."""
    out = Path(out)
    build_data(recipe, out / "data", progress=progress)
    init = out / "init"
    if (init / "config.json").is_file():
        return init
    if recipe.vision_stage:
        _maybe_vision_stage(recipe, out)
    tmp = out / "init.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_tokenizer(recipe, out / "data")
    model = build_model(recipe, tokenizer)
    model.save_pretrained(tmp)
    recipe.save(tmp)
    os.replace(tmp, init)
    return init


def stage_final(out: str | Path, stage: str) -> Path | None:
    """The finished model of ``stage`` in run folder ``out`` (None when it has not finished)."""
    phase_dir = Path(out) / stage / STAGE_PHASES[stage][-1]
    final = phase_dir / "final"
    return final if (phase_dir / "done.json").is_file() and (final / "config.json").is_file() else None


def previous_model(out: str | Path, stage: str) -> Path:
    """The model ``stage`` starts from: the previous stage's result in ``out``."""
    prev = _PREVIOUS[stage]
    found = stage_final(out, prev)
    if found is None:
        raise TrainError(f"`m3 train {stage}` starts from the {prev} result in {out}, which is not there; "
                         f"run `m3 train {prev}` with the same --out first, or pass --init MODEL_DIR.")
    return found


def _maybe_vision_stage(recipe: Recipe, out: Path) -> None:
    """Stage 1 when the recipe asks for it and no trained encoder is at ``encoder_path``."""
    path = Path(recipe.model.encoder_path)
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    if (path / "model.safetensors").is_file():
        return
    m = recipe.model
    cfg = VisionStageConfig(output_dir=str(out / "vision"), hidden_size=m.vision_hidden, depth=m.vision_depth, num_heads=m.vision_heads,
                            patch_size=m.patch_size, threads=recipe.threads or 2)
    enc = run_vision_stage(cfg)
    recipe.model.encoder_path = str(enc)
