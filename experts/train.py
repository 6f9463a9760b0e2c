"""``m3 experts train NAME``: train a built-in expert on phantom studies generated in memory.

One loop for the three experts: seeded data and initialisation, a tqdm progress bar, checkpoints that
resume (``RUN_DIR/checkpoint.pt``), validation metrics every ``val_every`` steps, a loss curve PNG, and
at the end the commit-ready files in ``experts/weights/<name>/`` (safetensors, ``config.json`` with the
calibration and the held-out metrics, ``model_card.md``, ``loss_curve.png``). What differs per expert
(network, data, loss, metrics) lives in ``experts.train_tasks``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experts.base import ExpertError
from experts.model_files import save_expert_files
from experts.train_tasks import CTTask, apply_override
from experts.train_tasks_mri_cxr import BrainTumorTask, CXRTask

__all__ = ["TrainConfig", "train_expert", "make_task", "native_bf16"]

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
    weights_root: str | None = None  # default: the embedded bundle, experts/weights/
    threads: int = 1  # one thread trains fastest on a busy shared CPU (no OpenMP barrier stalls)
    bf16: bool | None = None  # bfloat16 autocast for the forward pass; None: only on a CPU with native bfloat16
    resume: bool = True
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


def train_expert(cfg: TrainConfig) -> dict[str, Any]:
    """Train, validate, checkpoint, export and evaluate expert ``cfg.name``; returns the metrics."""
    from tqdm.auto import tqdm


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
    state = {"step": 0, "history": {"step": [], "loss": [], "val_step": [], "val": []}, "seconds": 0.0}
    if cfg.init_from:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(cfg.init_from) / "model.safetensors")))
        log.info("%s: starting from the weights in %s", cfg.name, cfg.init_from)
    ckpt = run / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("recipe") == asdict(rc):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["state"]
            torch.set_rng_state(saved["torch_rng"])
            log.info("resumed %s from step %d", cfg.name, state["step"])
        else:
            log.warning("checkpoint %s was made with another recipe; starting afresh", ckpt)

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
                     "final_validation": state["history"]["val"][-1] if state["history"]["val"] else {}},
    }
    curve = run / "loss_curve.png"
    _plot_history(state["history"], curve, cfg.name)
    folder = save_expert_files(cfg.name, config, model.state_dict(), "(evaluating)\n", cfg.weights_root)
    t_eval = time.perf_counter()
    metrics = task.evaluate_held_out(cfg.weights_root)  # through the real expert, on the input grid
    config["metrics"] = metrics
    config["training"]["evaluation_seconds"] = round(time.perf_counter() - t_eval, 1)
    card = task.model_card(config)
    save_expert_files(cfg.name, config, model.state_dict(), card, cfg.weights_root, extras={"loss_curve.png": curve})
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: weights in %s; held-out metrics %s", cfg.name, folder, metrics)
    return metrics


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


