"""``m3 train all``: vision (stage 1) → data → tokenizer and fresh model → align → ift → medical-ift → export →
evaluation → model card, each step skipped when an earlier run already finished it with the same settings.

Stage 1 runs when the recipe says ``vision_stage``; ``encoder=`` (``--encoder PATH``) starts the tower from a
trained encoder instead, and a recipe without ``vision_stage`` starts it from ``model.encoder_path``.

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
from vlm.train.console import banner, console
from vlm.train.ift import run_ift
from vlm.train.medical_ift import run_medical_ift
from vlm.train.recipes import Recipe
from vlm.train.run_folder import invocations, prepare, previous_model, save_run_recipe, stage_final  # noqa: F401 (re-exported)
from vlm.train.stages import STAGE_PHASES

__all__ = ["prepare", "previous_model", "stage_final", "run_all", "export_model", "DEFAULT_MODEL_DIR", "STAGE_TITLES", "run_summary"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "default"

STAGE_TITLES = {
    "vision": "distil the RADIO-style encoder from its teachers",
    "align": "projector alignment, then projector + LM on image-caption pairs",
    "ift": "instruction tuning on visual questions",
    "medical-ift": "expert conversations (tool call, tool result, grounded answer)",
}


def run_all(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False, encoder: str | Path | None = None,
            install_to: str | Path | None = None, evaluate: bool = True, experts: str = "auto", progress: bool = True,
            command: str = "") -> Path:
    """The whole recipe; returns the exported model folder (``<out>/final``, copied to ``install_to``).

    ``resume``: continue stages killed mid-way; ``force``: train every stage again; ``encoder``: a trained
    stage-1 encoder folder to start the tower from (stage 1 is then not run)."""
    from vlm.train.vision import run_vision_stage, vision_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(out / "pipeline.json")
    if encoder:
        recipe.vision_stage = False  # the saved recipe then names the encoder it started from
        banner(1, 4, "vision", "skipped", f"the tower starts from --encoder {encoder}")
    elif recipe.vision_stage:
        cfg = vision_config(recipe, out)
        banner(1, 4, "vision", STAGE_TITLES["vision"],
               f"{cfg.steps} steps × batch {cfg.batch_size}, teachers {', '.join(cfg.teachers)}, {cfg.n_ct_cases} CT + "
               f"{cfg.n_cxr_cases} radiograph phantoms → {out / 'vision'}")
        run_vision_stage(cfg, resume=resume, force=force, commands=invocations(out))
        clock.mark("vision")
    else:
        banner(1, 4, "vision", "skipped",
               f"recipe {recipe.name!r} starts the tower from {recipe.model.encoder_path or 'scratch (trained with the LM)'}; "
               f"train stage 1 with `m3 train vision --recipe {recipe.name} --out {out}` or pass --encoder PATH")
    init = prepare(recipe, out, encoder=encoder, force=force, progress=progress)
    save_run_recipe(out, recipe)
    clock.mark("data+init")
    model = init
    for index, (stage, runner) in enumerate((("align", run_align), ("ift", run_ift), ("medical-ift", run_medical_ift)), start=2):
        banner(index, 4, stage, STAGE_TITLES[stage], _stage_detail(recipe, stage, out))
        model = runner(recipe, out, init=model, resume=resume, force=force, progress=progress)
        clock.mark(stage)
    final = export_model(model, out / "final", recipe)
    clock.mark("export")
    if evaluate:
        from vlm.eval.harness import evaluate_model, write_model_card

        limit = recipe.eval_limit
        console.info("\n== evaluation: held-out phantoms through the agent, %s → %s ==", f"{limit} items per part (recipe eval_limit; "
                     f"`m3 eval --model {final} --data {out / 'data'}` scores every test item)" if limit else "every test item", out / "eval")
        report = evaluate_model(final, out / "data", out / "eval", experts=experts, limit=limit, progress=progress)
        clock.mark("eval")
        write_model_card(final, recipe, report, training=_training_time(out, clock),
                         command=command or f"m3 train all --recipe {recipe.name} --out {out}", commands=invocations(out) or None)
    if install_to:
        install(final, install_to)
    return final


def run_summary(out: str | Path, stages: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of the end-of-run table for ``stages`` of run folder ``out``, read from what the stages wrote:
    stage, phase, steps, train loss first/last, probe loss before/after, training time (all invocations), status."""
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for stage in stages:
        if stage == "vision":
            done = out / "vision" / "done.json"
            if done.is_file():
                d = json.loads(done.read_text())
                rows.append({"stage": "vision", "phase": "distillation", "steps": d.get("steps"), "loss_first": d.get("loss_first"),
                             "loss_last": d.get("loss_last"), "seconds": d.get("seconds_total"), "status": d.get("status", "trained")})
            continue
        summary = out / stage / "metrics.json"
        phases = json.loads(summary.read_text())["phases"] if summary.is_file() else []
        for ph in phases:
            if ph["phase"] not in STAGE_PHASES.get(stage, ()):
                continue
            rows.append({"stage": stage, "phase": ph["phase"], "steps": ph.get("steps"), "loss_first": ph.get("loss_first"),
                         "loss_last": ph.get("loss_last"), "probe_before": ph.get("probe_loss_before"), "probe_after": ph.get("probe_loss_after"),
                         "seconds": ph.get("seconds_total", ph.get("seconds_this_run")), "status": ph.get("status", "")})
    return rows


def _stage_detail(recipe: Recipe, stage: str, out: Path) -> str:
    parts = []
    for phase in STAGE_PHASES[stage]:
        spec = recipe.stages[phase]
        parts.append(f"{phase}: {spec.steps} steps × batch {spec.batch_size}, lr {spec.lr:g}, trains {'+'.join(spec.train)}"
                     + (" (LoRA)" if spec.lora else ""))
    return "; ".join(parts) + f" → {out / stage}"


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
    seconds: dict[str, float] = {}
    done = out / "vision" / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("seconds_total") is not None:
        seconds["train vision"] = json.loads(done.read_text())["seconds_total"]
    for stage, phases in STAGE_PHASES.items():
        for phase in phases:
            path = out / stage / phase / "metrics.json"
            if path.is_file():
                m = json.loads(path.read_text())
                seconds[f"train {phase}"] = m.get("seconds_total", m["seconds_this_run"])
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
