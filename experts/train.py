"""``m3 experts train NAME``: train a built-in expert on phantom studies generated in memory.

One loop for the three experts: seeded data and initialisation, a tqdm progress bar, checkpoints that
resume (``RUN_DIR/<name>/checkpoint.pt``), validation metrics every ``val_every`` steps, a loss curve PNG, and
at the end the expert's files in ``WEIGHTS_ROOT/<name>/`` (safetensors, ``config.json`` with the calibration,
the held-out metrics and every command that trained it, ``model_card.md``, ``loss_curve.png``, ``manifest.json``).

``WEIGHTS_ROOT`` defaults to ``RUN_DIR/weights`` (``runs/experts/weights``): a retrained expert never replaces
the shipped one in ``experts/weights/`` unless that folder is given explicitly. The app and every ``m3`` command
use such a folder through ``models.experts_dir`` (``M3_MODELS_EXPERTS_DIR=runs/experts/weights``).

Resume and rerun rules (those of ``m3 train``, ``vlm.train.run_folder``): a run folder that already holds a checkpoint
is refused unless ``resume`` (``--resume``: continue from the newest checkpoint with the run's saved recipe, seed,
overrides and precision; a flag given that disagrees with them is refused, naming what differs) or ``force``
(``--force``: discard the checkpoint and train from step 0). A resumed run draws the batches an uninterrupted one
would (the numpy and torch random states travel with the checkpoint). What differs per expert (network, data,
loss, metrics) lives in ``experts.train_tasks``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experts.base import ExpertError
from experts.model_files import save_expert_files
from experts.train_tasks import CTTask, Recipe, apply_override
from experts.train_tasks_mri_cxr import BrainTumorTask, CXRTask

__all__ = ["TrainConfig", "train_expert", "make_task", "native_bf16", "default_weights_root"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training run. ``steps``/``batch_size``/``lr``/``n_train`` default to the expert's recipe."""

    name: str
    seed: int | None = None  # None: 0 for a new run, the run's own seed with ``resume``
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    val_every: int | None = None
    run_dir: str = "runs/experts"
    weights_root: str | None = None  # None: <run_dir>/weights (never the shipped experts/weights/ unless named here)
    threads: int = 1  # one thread trains fastest on a busy shared CPU (no OpenMP barrier stalls)
    bf16: bool | None = None  # bfloat16 autocast for the forward pass; None: only on a CPU with native bfloat16 (resume: the run's)
    resume: bool = False  # continue the checkpoint in <run_dir>/<name> with its saved settings (flags given must agree)
    force: bool = False  # discard a checkpoint in <run_dir>/<name> and train from step 0
    command: str = ""  # the command line recorded in the card ("" : this process's)
    init_from: str | None = None  # a weights folder (model.safetensors) to start from instead of random weights
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resume and self.force:
            raise ExpertError("resume and force exclude each other: --resume continues the run in --run-dir, --force "
                              "discards it and trains from step 0; give one of them.")


def make_task(name: str, cfg: Any, recipe: dict[str, Any] | None = None):
    """The task object of expert ``name`` with ``cfg``'s (TrainConfig) overrides applied, over ``recipe`` (a saved
    ``asdict(Recipe)``, as a checkpoint holds it) when given, else over the expert's built-in recipe."""
    tasks = {"ct_segmentation": CTTask, "mri_brain_tumor": BrainTumorTask, "cxr_classification": CXRTask}
    if name not in tasks:
        raise ExpertError(f"no training recipe for expert {name!r}; trainable experts: {', '.join(tasks)}.")
    task = tasks[name]()
    if recipe is not None:
        task.recipe = Recipe(**{**recipe, "crop_ratios": dict(recipe.get("crop_ratios") or {})})
    for key in ("steps", "batch_size", "lr", "n_train", "n_val", "n_test", "val_every"):
        value = getattr(cfg, key, None)
        if value is not None:
            setattr(task.recipe, key, value)
    for key, value in (getattr(cfg, "overrides", None) or {}).items():
        apply_override(task.recipe, key, value)
    if task.recipe.refresh_every and not hasattr(task, "refresh"):
        raise ExpertError(f"refresh_every is not available for {name}: its training set is fixed (only ct_segmentation "
                          "draws new phantoms during training); leave refresh_every out.")
    task.seed = cfg.seed or 0
    return task


def default_weights_root(cfg: TrainConfig) -> Path:
    """Where the trained expert's folder goes: ``cfg.weights_root``, else ``<run_dir>/weights``."""
    return Path(cfg.weights_root) if cfg.weights_root else Path(cfg.run_dir) / "weights"


def train_expert(cfg: TrainConfig) -> dict[str, Any]:
    """Train, validate, checkpoint, export and evaluate expert ``cfg.name``; returns the metrics.

    Raises ``ExpertError`` when ``<run_dir>/<name>`` already holds a checkpoint and neither ``cfg.resume`` nor
    ``cfg.force`` says what to do with it, or when ``cfg.resume`` meets a setting that disagrees with the run's."""
    from tqdm.auto import tqdm

    run = Path(cfg.run_dir) / cfg.name
    ckpt = run / "checkpoint.pt"
    saved = _open_run(cfg, run, ckpt)
    cfg = _resumed_config(cfg, saved, ckpt) if saved is not None else replace(cfg, seed=cfg.seed or 0)
    weights_root = str(default_weights_root(cfg))
    invocation = {"command": cfg.command or _command_line(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    t_invocation = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    bf16 = native_bf16() if cfg.bf16 is None else cfg.bf16
    task = make_task(cfg.name, cfg, recipe=saved["recipe"] if saved is not None else None)
    rc = task.recipe
    if saved is not None and asdict(rc) != saved["recipe"]:
        old = saved["recipe"]
        differ = "; ".join(f"{k} {old.get(k)!r} (saved) vs {v!r} (given)" for k, v in asdict(rc).items() if old.get(k) != v)
        raise ExpertError(f"{ckpt}: the {cfg.name} run there (step {saved['state']['step']} of {old.get('steps')}) was made with "
                          f"other settings than this invocation asks: {differ}. To continue it, drop those flags (--resume reads "
                          "the run's own); to train again with the new ones, use --force instead of --resume; or choose another --run-dir.")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rc.lr, total_steps=rc.steps, pct_start=0.1)
    state = {"step": 0, "history": {"step": [], "loss": [], "val_step": [], "val": []}, "seconds": 0.0, "commands": []}
    rng = np.random.default_rng([cfg.seed, 0])
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        state.setdefault("commands", [])
        torch.set_rng_state(saved["torch_rng"])
        if "numpy_rng" in saved:
            rng.bit_generator.state = saved["numpy_rng"]
        else:  # a checkpoint written before the numpy state was saved: its batches after the resume differ
            rng = np.random.default_rng([cfg.seed, state["step"]])
        log.info("resumed %s from step %d of %d", cfg.name, state["step"], rc.steps)
    elif cfg.init_from:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")))
        log.info("%s: starting from the weights in %s", cfg.name, cfg.init_from)
    state["commands"].append(invocation)
    settings = {"seed": cfg.seed, "overrides": dict(cfg.overrides), "bf16": bf16, "init_from": cfg.init_from, "weights_root": weights_root}

    t_data = time.perf_counter()
    refresh = getattr(task, "refresh", None)  # tasks whose training set is renewed during the run
    if refresh:
        task.prepare_data(start_step=state["step"])
    else:
        task.prepare_data()
    log.info("%s: %d training / %d validation phantoms ready in %.1f s", cfg.name, rc.n_train, rc.n_val, time.perf_counter() - t_data)
    bar = tqdm(total=rc.steps, initial=state["step"], desc=f"train {cfg.name}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter() - state["seconds"]
    model.train()
    while state["step"] < rc.steps:
        if refresh:
            refresh(state["step"])
        x, y = task.batch(rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # ~2x faster convolutions on CPUs with native bf16
            logits = model(x)
        loss = task.loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["history"]["step"].append(state["step"])
        state["history"]["loss"].append(float(loss))
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.4f}")
        if state["step"] % rc.val_every == 0 or state["step"] == rc.steps:
            model.eval()
            metrics = task.validate(model)
            model.train()
            state["history"]["val_step"].append(state["step"])
            state["history"]["val"].append(metrics)
            bar.write(f"step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            state["seconds"] = time.perf_counter() - t0
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "state": state, "recipe": asdict(rc), "settings": settings, "torch_rng": torch.get_rng_state(),
                        "numpy_rng": rng.bit_generator.state}, ckpt)
    bar.close()
    state["seconds"] = time.perf_counter() - t0
    model.eval()

    previous = None
    if cfg.init_from:  # record what the run continued from (its version and training), before it is overwritten
        prev_cfg = Path(cfg.init_from) / "config.json"
        previous = json.loads(prev_cfg.read_text()) if prev_cfg.is_file() else {}
        previous = {"version": previous.get("version"), "training": previous.get("training")}
    calibration = task.calibrate(model)  # e.g. CXR thresholds chosen on validation data
    config = {
        "expert": cfg.name,
        "version": f"{cfg.name}-phantom-seed{cfg.seed}-{rc.steps}steps" + ("-continued" if cfg.init_from else ""),
        "network": task.network_config(),
        **calibration,
        "training": {"recipe": asdict(rc), "overrides": dict(cfg.overrides), "seed": cfg.seed, "seconds": round(state["seconds"], 1), "init_from": previous,
                     "final_validation": state["history"]["val"][-1] if state["history"]["val"] else {},
                     "settings": {"threads": cfg.threads, "bf16": bf16, "run_dir": cfg.run_dir, "weights_root": weights_root},
                     "commands": state["commands"]},
    }
    curve = run / "loss_curve.png"
    _plot_history(state["history"], curve, cfg.name)
    folder = save_expert_files(cfg.name, config, model.state_dict(), "(evaluating)\n", weights_root)
    t_eval = time.perf_counter()
    metrics = task.evaluate_held_out(weights_root)  # through the real expert, on the input grid
    config["metrics"] = metrics
    config["training"]["evaluation_seconds"] = round(time.perf_counter() - t_eval, 1)
    invocation["seconds"] = round(time.perf_counter() - t_invocation, 1)
    card = task.model_card(config) + _commands_section(state["commands"])
    save_expert_files(cfg.name, config, model.state_dict(), card, weights_root, extras={"loss_curve.png": curve})
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: weights in %s; held-out metrics %s", cfg.name, folder, metrics)
    log.info("use them (the shipped experts/weights/ is unchanged): M3_MODELS_EXPERTS_DIR=%s m3 experts run %s STUDY, "
             "the same variable (or [models] experts_dir in the m3 config file) for m3 serve; with "
             "M3_MODELS_EMBEDDED_EXPERTS_FALLBACK=1 the experts not trained here come from the shipped bundle.", weights_root, cfg.name)
    return metrics


def _open_run(cfg: TrainConfig, run: Path, ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint this invocation continues (``cfg.resume``), or None for a run from step 0 (none there, or
    ``cfg.force`` discarded it). Without either flag an existing checkpoint is refused, saying what to do."""
    if not ckpt.is_file():
        if cfg.resume:
            raise ExpertError(f"--resume continues the {cfg.name} run in {run}, but it holds no checkpoint.pt; start "
                              "without --resume, or point --run-dir at the folder of the earlier run.")
        return None
    if cfg.force:
        for name in ("checkpoint.pt", "metrics.json", "loss_curve.png"):
            (run / name).unlink(missing_ok=True)
        log.info("%s: --force: the checkpoint in %s is discarded; training from step 0", cfg.name, run)
        return None
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    if cfg.resume:
        return saved
    step, steps = saved["state"]["step"], (saved.get("recipe") or {}).get("steps")
    where = (saved.get("settings") or {}).get("weights_root")
    if steps is not None and step >= steps:
        raise ExpertError(f"{run} already holds a finished {cfg.name} run ({steps} steps" + (f"; its weights are in {where}/{cfg.name}" if where else "")
                          + "). Add --force to train it again from step 0 (the checkpoint is discarded), --resume to redo "
                          "only its export and held-out evaluation, or choose another --run-dir.")
    raise ExpertError(f"{run} already holds a {cfg.name} run stopped at step {step} of {steps} (checkpoint.pt). Add --resume "
                      "to continue it with its saved settings, --force to discard it and train from step 0, or choose another --run-dir.")


def _resumed_config(cfg: TrainConfig, saved: dict[str, Any], ckpt: Path) -> TrainConfig:
    """``cfg`` completed with the run's saved seed, overrides, precision, starting weights and weights folder;
    a value given here that disagrees with the run's is refused. (The recipe itself is compared by the caller.)"""
    run = saved.get("settings") or {}  # absent in checkpoints written before settings were saved: nothing to compare
    differ = []
    for key in ("seed", "bf16", "init_from"):  # --set values show up in the recipe comparison
        given = getattr(cfg, key)
        if key in run and given is not None and given != run[key]:
            differ.append(f"{key} {run[key]!r} (saved) vs {given!r} (given)")
    if differ:
        raise ExpertError(f"{ckpt}: the {cfg.name} run there was made with other settings than this invocation asks: "
                          f"{'; '.join(differ)}. To continue it, drop those flags (--resume reads the run's own); to train "
                          "again with the new ones, use --force instead of --resume; or choose another --run-dir.")
    return replace(
        cfg,
        seed=run.get("seed", cfg.seed or 0) if cfg.seed is None else cfg.seed,
        bf16=run.get("bf16") if cfg.bf16 is None else cfg.bf16,
        init_from=run.get("init_from") if cfg.init_from is None else cfg.init_from,
        overrides={**(run.get("overrides") or {}), **cfg.overrides},
        weights_root=cfg.weights_root or run.get("weights_root"),
    )


def _command_line() -> str:
    argv = sys.argv
    prog = "m3" if argv and (Path(argv[0]).name in ("m3", "main.py", "__main__.py")) else Path(argv[0]).name if argv else "python"
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


def _commands_section(commands: list[dict[str, Any]]) -> str:
    """The card's record of every command that trained this expert (resumes included), oldest first."""
    lines = ["", "## Commands that trained it", "", "| started (UTC) | command | wall time (s) |", "|---|---|---|"]
    lines += [f"| {c.get('started', '')} | `{c['command']}` | {c.get('seconds', '(killed or stopped)')} |" for c in commands]
    return "\n".join(lines) + "\n"


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX). Elsewhere (AVX2) autocast
    emulates it and a CT training step is ~30x slower than in float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _plot_history(history: dict[str, list], path: Path, name: str) -> None:
    """Training loss (raw and smoothed) and validation metrics against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax1.plot(steps, loss, alpha=0.3, label="loss")
    if len(loss) >= 20:
        k = max(5, len(loss) // 50)
        ax1.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.legend()
    for key in (history["val"][0].keys() if history["val"] else []):
        ax2.plot(history["val_step"], [m[key] for m in history["val"]], marker="o", label=key)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation")
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle(f"{name} training")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


