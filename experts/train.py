"""``m3 experts train NAME``: train a built-in expert on phantom studies generated in memory.

One loop for the three experts: seeded data and initialisation, a tqdm progress bar, checkpoints that
resume (``RUN_DIR/<name>/checkpoint.pt``), validation metrics every ``val_every`` steps, a loss curve PNG, and
at the end the expert's files in ``WEIGHTS_ROOT/<name>/`` (safetensors, ``config.json`` with the calibration,
the held-out metrics and every command that trained it, ``model_card.md``, ``loss_curve.png``, ``manifest.json``).

``WEIGHTS_ROOT`` defaults to ``RUN_DIR/weights`` (``runs/experts/weights``): a retrained expert never replaces
the shipped one in ``experts/weights/`` unless that folder is given explicitly. The app and every ``m3`` command
use such a folder through ``models.experts_dir`` (``M3_MODELS_EXPERTS_DIR=runs/experts/weights``).

Resume rules (as for ``m3 train``): a checkpoint made with the same recipe is continued; one made with another
recipe is refused (the message names what differs) unless ``resume=False`` (``--no-resume``) starts afresh.
What differs per expert (network, data, loss, metrics) lives in ``experts.train_tasks``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experts.base import ExpertError
from experts.model_files import save_expert_files
from experts.train_tasks import CTTask, apply_override
from experts.train_tasks_mri_cxr import BrainTumorTask, CXRTask

__all__ = ["TrainConfig", "train_expert", "make_task", "native_bf16", "default_weights_root"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training run. ``steps``/``batch_size``/``lr``/``n_train`` default to the expert's recipe."""

    name: str
    seed: int = 0
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
    bf16: bool | None = None  # bfloat16 autocast for the forward pass; None: only on a CPU with native bfloat16
    resume: bool = True  # continue a checkpoint of the same recipe (another recipe's is refused); False: start afresh
    command: str = ""  # the command line recorded in the card ("" : this process's)
    init_from: str | None = None  # a weights folder (model.safetensors) to start from instead of random weights
    overrides: dict[str, Any] = field(default_factory=dict)


def make_task(name: str, cfg: Any):
    """The task object of expert ``name`` with ``cfg``'s (TrainConfig) overrides applied."""
    tasks = {"ct_segmentation": CTTask, "mri_brain_tumor": BrainTumorTask, "cxr_classification": CXRTask}
    if name not in tasks:
        raise ExpertError(f"no training recipe for expert {name!r}; trainable experts: {', '.join(tasks)}.")
    task = tasks[name]()
    for key in ("steps", "batch_size", "lr", "n_train", "n_val", "n_test", "val_every"):
        value = getattr(cfg, key, None)
        if value is not None:
            setattr(task.recipe, key, value)
    for key, value in (getattr(cfg, "overrides", None) or {}).items():
        apply_override(task.recipe, key, value)
    if task.recipe.refresh_every and not hasattr(task, "refresh"):
        raise ExpertError(f"refresh_every is not available for {name}: its training set is fixed (only ct_segmentation "
                          "draws new phantoms during training); leave refresh_every out.")
    task.seed = cfg.seed
    return task


def default_weights_root(cfg: TrainConfig) -> Path:
    """Where the trained expert's folder goes: ``cfg.weights_root``, else ``<run_dir>/weights``."""
    return Path(cfg.weights_root) if cfg.weights_root else Path(cfg.run_dir) / "weights"


def train_expert(cfg: TrainConfig) -> dict[str, Any]:
    """Train, validate, checkpoint, export and evaluate expert ``cfg.name``; returns the metrics."""
    from tqdm.auto import tqdm

    weights_root = str(default_weights_root(cfg))
    invocation = {"command": cfg.command or _command_line(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    t_invocation = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    bf16 = native_bf16() if cfg.bf16 is None else cfg.bf16
    task = make_task(cfg.name, cfg)
    rc = task.recipe
    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rc.lr, total_steps=rc.steps, pct_start=0.1)
    state = {"step": 0, "history": {"step": [], "loss": [], "val_step": [], "val": []}, "seconds": 0.0, "commands": []}
    if cfg.init_from:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")))
        log.info("%s: starting from the weights in %s", cfg.name, cfg.init_from)
    ckpt = run / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("recipe") != asdict(rc):
            old, new = saved.get("recipe") or {}, asdict(rc)
            differ = "; ".join(f"{k} {old.get(k)!r} → {v!r}" for k, v in new.items() if old.get(k) != v)
            raise ExpertError(f"{ckpt} holds a {cfg.name} checkpoint (step {saved['state']['step']}) made with another recipe: {differ}. "
                              "To continue it, repeat its settings; to start again with these, add --no-resume (the checkpoint is "
                              "discarded); or choose another --run-dir.")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        state.setdefault("commands", [])
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed %s from step %d of %d", cfg.name, state["step"], rc.steps)
    elif ckpt.is_file():
        log.info("%s: --no-resume: the checkpoint %s is discarded; training from step 0", cfg.name, ckpt)
    state["commands"].append(invocation)

    t_data = time.perf_counter()
    refresh = getattr(task, "refresh", None)  # tasks whose training set is renewed during the run
    if refresh:
        task.prepare_data(start_step=state["step"])
    else:
        task.prepare_data()
    log.info("%s: %d training / %d validation phantoms ready in %.1f s", cfg.name, rc.n_train, rc.n_val, time.perf_counter() - t_data)
    rng = np.random.default_rng([cfg.seed, state["step"]])
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
                        "state": state, "recipe": asdict(rc), "torch_rng": torch.get_rng_state()}, ckpt)
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


