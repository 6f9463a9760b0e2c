"""``m3 train all``: data → tokenizer and fresh model → (vision) → align → ift → medical-ift → export →
evaluation → model card, each step skipped when an earlier run already finished it.

The exported model stores its weights in the recipe's ``weights_dtype`` (float16 for ``tiny``: half
the bytes, the same answers within rounding), and is what the evaluation measures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vlm.train.align import run_align
from vlm.train.ift import run_ift
from vlm.train.medical_ift import run_medical_ift
from vlm.train.recipes import Recipe
from vlm.train.run_folder import prepare, previous_model, stage_final  # noqa: F401 (re-exported)

__all__ = ["prepare", "previous_model", "stage_final", "run_all", "export_model", "DEFAULT_MODEL_DIR"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "default"


def run_all(recipe: Recipe, out: str | Path, *, resume: bool = False, install_to: str | Path | None = None,
            evaluate: bool = True, experts: str = "auto", progress: bool = True, command: str = "") -> Path:
    """The whole recipe; returns the exported model folder (``<out>/final``, copied to ``install_to``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(out / "pipeline.json")
    init = prepare(recipe, out, progress=progress)
    clock.mark("data+init")
    model = run_align(recipe, out, init=init, resume=resume, progress=progress)
    clock.mark("align")
    model = run_ift(recipe, out, init=model, resume=resume, progress=progress)
    clock.mark("ift")
    model = run_medical_ift(recipe, out, init=model, resume=resume, progress=progress)
    clock.mark("medical-ift")
    final = export_model(model, out / "final", recipe)
    clock.mark("export")
    if evaluate:
        from vlm.eval.harness import evaluate_model, write_model_card

        report = evaluate_model(final, out / "data", out / "eval", experts=experts, limit=recipe.eval_limit, progress=progress)
        clock.mark("eval")
        write_model_card(final, recipe, report, training=_training_time(out, clock), command=command or f"m3 train all --recipe {recipe.name} --out {out}")
    if install_to:
        install(final, install_to)
    return final


def export_model(src: str | Path, dst: str | Path, recipe: Recipe) -> Path:
    """Copy a trained model to ``dst`` (atomically) with its weights cast to ``recipe.model.weights_dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, recipe.model.weights_dtype)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for f in tmp.rglob("*.safetensors"):
        state = load_file(str(f))
        save_file({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}, str(f), metadata={"format": "pt"})
    recipe.save(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def install(src: str | Path, dst: str | Path) -> Path:
    """Replace the model folder ``dst`` (e.g. the embedded default) by ``src``, atomically, with a fresh
    ``manifest.json`` (the server verifies it before loading)."""
    from vlm.export import write_manifest

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    write_manifest(tmp)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def _training_time(out: Path, clock: "_Clock") -> dict[str, Any]:
    """Seconds per training phase (from each phase's metrics: a resumed run's clock would miss the part
    before the stop) plus the pipeline's other steps."""
    from vlm.train.stages import STAGE_PHASES

    seconds: dict[str, float] = {}
    for stage, phases in STAGE_PHASES.items():
        for phase in phases:
            path = out / stage / phase / "metrics.json"
            if path.is_file():
                seconds[f"train {phase}"] = json.loads(path.read_text())["seconds_this_run"]
    for step in ("data+init", "export", "eval"):
        if step in clock.data["seconds"]:
            seconds[step] = clock.data["seconds"][step]
    return {"seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1)}


class _Clock:
    """Wall time of each pipeline step, kept in ``pipeline.json`` (a resumed run adds to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"seconds": {}}
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.data["seconds"][name] = round(self.data["seconds"].get(name, 0.0) + now - self.t, 1)
        self.t = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def summary(self) -> dict[str, Any]:
        secs = self.data["seconds"]
        return {"seconds": secs, "total_minutes": round(sum(secs.values()) / 60, 1)}
