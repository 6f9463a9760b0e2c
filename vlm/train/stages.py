"""The training loop every VLM stage shares, over ``accelerate``, with atomic checkpoints and resume.

A stage is one or more *phases* (``align`` = ``align_projector`` then ``align``). A phase starts from a
model folder (VILA layout), trains the parts its ``StageSpec`` names (full or LoRA), and writes::

    <stage>/<phase>/checkpoints/step_000100/   accelerate state (model, optimizer, scheduler, RNG, step,
                                               loss history) + recipe.json; written to a temporary
                                               folder first, then renamed (os.replace)
    <stage>/<phase>/final/                     the trained model (VILA layout) + recipe.json
    <stage>/<phase>/metrics.json               steps, losses, speed
    <stage>/loss.png, <stage>/metrics.json     the stage's curves and numbers

Batches are drawn by step number (a seeded mixture of the data files), so a resumed phase sees exactly
the batches an uninterrupted one would have. A phase resumes only with settings equal to its checkpoint's
``stage.json`` (``ResumeConflict`` otherwise); a finished phase is skipped unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlm.train.build import ResumeConflict, TrainError, data_files
from vlm.train.console import console
from vlm.train.dataset import IGNORE_INDEX, ConversationDataset, PixelCache, collate
from vlm.train.recipes import Recipe, StageSpec

__all__ = ["train_phase", "run_stage", "SharedPrefixLoss", "shared_prefix_length", "STAGE_PHASES", "STAGE_ORDER", "latest_checkpoint", "TrainError"]

log = logging.getLogger(__name__)

STAGE_ORDER = ("align", "ift", "medical-ift")
STAGE_PHASES = {"align": ("align_projector", "align"), "ift": ("ift",), "medical-ift": ("medical-ift",)}
_PHASE_CODE = {"align_projector": 11, "align": 12, "ift": 13, "medical-ift": 14}
_DONE = "done.json"


def run_stage(stage: str, recipe: Recipe, out: str | Path, init: str | Path, *, resume: bool = False, force: bool = False,
              overrides: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Train every phase of ``stage`` starting from the model folder ``init``; returns the final model
    folder. ``overrides``: StageSpec fields applied to each phase (e.g. ``{"steps": 50}``); ``force``: discard
    the stage's checkpoints and result and train it again."""
    if stage not in STAGE_PHASES:
        raise TrainError(f"stage must be one of {tuple(STAGE_PHASES)}, got {stage!r}.")
    out = Path(out)
    stage_dir = out / stage
    model_dir = Path(init)
    results = []
    if force and stage_dir.exists():
        console.info("   --force: discarding %s (checkpoints and result) and training %s again", stage_dir, stage)
        shutil.rmtree(stage_dir)
    for phase in STAGE_PHASES[stage]:
        spec = recipe.stages.get(phase)
        if spec is None:
            raise TrainError(f"recipe {recipe.name!r} must define stage {phase!r} in its `stages`; it does not.")
        if overrides:
            spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
        model_dir, metrics = train_phase(phase, spec, recipe, out / "data", model_dir, stage_dir / phase, resume=resume, progress=progress,
                                         stage=stage)
        results.append(metrics)
    _stage_report(stage, stage_dir, results)
    return model_dir


def train_phase(phase: str, spec: StageSpec, recipe: Recipe, data_dir: str | Path, init: str | Path, phase_dir: str | Path, *,
                resume: bool = False, progress: bool = True, stage: str = "") -> tuple[Path, dict[str, Any]]:
    """Train one phase; returns ``(final model folder, metrics)`` (``metrics["status"]`` says what this call did).
    A finished phase is not re-run; one finished or checkpointed with other settings is refused."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    from vlm.agent_context import agent_context
    from vlm.model import load_model

    phase_dir = Path(phase_dir)
    final = phase_dir / "final"
    stage = stage or phase
    if (phase_dir / _DONE).is_file() and (final / "config.json").is_file():
        check_stage_settings(phase, spec, final / "stage.json", "finished result", stage)
        console.info("   %s: already finished with these settings (%s); skipping. Add --force to train it again.", phase, final)
        return final, {**json.loads((phase_dir / "metrics.json").read_text()), "status": "already finished (skipped)"}
    ckpt = latest_checkpoint(phase_dir)
    if ckpt is not None and not resume:
        raise TrainError(f"{phase_dir} already holds checkpoint {ckpt.name} of an earlier, unfinished run; pass --resume to continue "
                         "it, --force to discard it and start again, or choose another --out folder.")
    if ckpt is not None:
        check_stage_settings(phase, spec, ckpt / "stage.json", f"checkpoint {ckpt.name}", stage)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    on_gpu = torch.cuda.is_available()
    mp = recipe.mixed_precision if (on_gpu or recipe.mixed_precision != "fp16") else "no"
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=mp)

    model = load_model(init)
    # The phase's own random stream (the tower's position-embedding crops in train mode, LoRA init): the result
    # depends on the phase's inputs only, not on what ran before in the process; a resume restores the saved stream.
    torch.manual_seed(recipe.seed * 1000 + _PHASE_CODE.get(phase, 0))
    context = agent_context(model.config)  # the system prompt and tools the agent serves this model with
    files = data_files(data_dir)
    datasets = {}
    for name in spec.mix:
        if f"{name}_train" not in files:
            raise TrainError(f"{phase} needs {name}_train.json in {data_dir}; build the data first (m3 train all, or m3 data instructions).")
        datasets[name] = _dataset(files[f"{name}_train"], model, context.tools, context.system_prompt, recipe, spec.measurement_copies,
                                  tuple(spec.leave_out.get(name, ())))
    trainable = _set_trainable(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(spec.warmup_fraction * spec.steps)), spec.steps)
    state = _TrainState()
    accelerator.register_for_checkpointing(state)
    vlm = model
    model, optimizer, scheduler = accelerator.prepare(SharedPrefixLoss(vlm), optimizer, scheduler)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        console.info("   %s: resuming from %s (step %d of %d)", phase, ckpt.name, state.step, spec.steps)
    resumed_at = state.step
    pixels = PixelCache(vlm.vision_tower)
    pad_id = vlm.tokenizer.pad_token_id or 0
    probe = _probe_batches(spec, datasets, pixels, pad_id)
    if state.step == 0:
        state.probe_before = _probe_loss(model, probe, vlm.image_token_index, accelerator)
    model.train()
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=spec.steps, initial=state.step, desc=phase, unit="step")
    t_start = time.perf_counter()
    seconds_before = state.seconds
    steps_here = 0
    for step in range(state.step + 1, spec.steps + 1):
        items = _batch_items(step, spec, datasets, recipe.seed, _PHASE_CODE.get(phase, 0))
        items = items[accelerator.process_index::accelerator.num_processes]
        samples = [datasets[src][i] for src, i in items]
        n_labels = sum(_label_count(s.labels) for s in samples)
        loss = 0.0
        for chunk in length_chunks(samples, spec.max_chunks):
            batch = collate(chunk, pixels, pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            prefix = shared_prefix_length(batch["input_ids"], batch["labels"], vlm.image_token_index)
            # token-weighted: the pieces' losses add up to the whole batch's mean loss
            part = model(**batch, prefix_length=prefix) * (sum(_label_count(s.labels) for s in chunk) / max(n_labels, 1))
            accelerator.backward(part)
            loss += float(part.detach())
        loss = torch.tensor(loss)
        if spec.grad_clip:
            accelerator.clip_grad_norm_(params, spec.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.history.append([step, float(loss.detach()), float(scheduler.get_last_lr()[0])])
        steps_here += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{state.history[-1][1]:.3f}")
        if step % spec.checkpoint_every == 0 and step < spec.steps:
            state.seconds = seconds_before + time.perf_counter() - t_start
            _save_checkpoint(accelerator, phase_dir, step, recipe, spec)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t_start
    probe_after = _probe_loss(model, probe, vlm.image_token_index, accelerator)
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model).vlm
    if spec.lora is not None and "llm" in spec.train:
        trained.llm = trained.llm.merge_and_unload()
    state.seconds = seconds_before + seconds
    metrics = _phase_metrics(phase, spec, state.history, seconds, steps_here, trainable)
    metrics.update(probe_loss_before=state.probe_before, probe_loss_after=probe_after, seconds_total=round(state.seconds, 1))
    if accelerator.is_main_process:
        _save_final(trained, final, recipe, spec)
        (phase_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _atomic_write(phase_dir / _DONE, json.dumps({"steps": state.step}) + "\n")
        shutil.rmtree(phase_dir / "checkpoints", ignore_errors=True)
    return final, {**metrics, "status": f"resumed at step {resumed_at}" if resumed_at else "trained"}


def _label_count(labels: torch.Tensor) -> int:
    """Positions a sample is scored on (its labels after the first token)."""
    return int((labels[1:] != IGNORE_INDEX).sum())


def length_chunks(samples: list, max_chunks: int, chunk_cost: int = 1024) -> list[list]:
    """Split a batch into up to ``max_chunks`` pieces of similar length (sorted by length, contiguous cuts)
    minimising padded tokens + ``chunk_cost`` per piece, so a few long conversations do not pad the whole
    batch to their length. (Exhaustive over cut points: a batch has a few dozen samples at most.)"""
    from itertools import combinations

    order = sorted(samples, key=lambda s: len(s.input_ids))
    lengths = [len(s.input_ids) for s in order]
    n = len(order)
    best, best_cuts = None, ()
    for k in range(min(max(1, max_chunks), n)):
        for cuts in combinations(range(1, n), k):
            bounds = (0, *cuts, n)
            cost = sum((b - a) * lengths[b - 1] for a, b in zip(bounds, bounds[1:])) + chunk_cost * k
            if best is None or cost < best:
                best, best_cuts = cost, cuts
    bounds = (0, *best_cuts, n)
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


class SharedPrefixLoss(torch.nn.Module):
    """The training forward: VLM → next-token cross-entropy on the labelled positions.

    Every sample of a batch starts with the same tokens (system prompt and tool definitions), so the LM
    runs that prefix once and repeats its key/value cache over the batch; gradients flow through it as
    through any activation. Logits are computed only where some sample has a label (the LM head over
    the prompt would be wasted work). Prepared by ``accelerate`` as the module, so DDP / FSDP see it.
    """

    def __init__(self, vlm: torch.nn.Module) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor | None = None, prefix_length: int = 0) -> torch.Tensor:
        vlm = self.vlm
        feats = vlm.encode_images(pixel_values) if pixel_values is not None and pixel_values.numel() else None
        embeds = vlm.embed(input_ids, feats)  # (B, L, H)
        targets = labels[:, 1:]  # (B, L-1): token p+1 is predicted at position p
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,)
        p = int(prefix_length)
        if p > 0:
            pre = vlm.llm(inputs_embeds=embeds[:1, :p], use_cache=True)
            cache = pre.past_key_values
            for layer in cache.layers:
                layer.batch_repeat_interleave(embeds.shape[0])
            out = vlm.llm(inputs_embeds=embeds[:, p:], attention_mask=attention_mask, use_cache=True, logits_to_keep=keep - p,
                          **{_cache_kwarg(vlm.llm): cache})
        else:
            out = vlm.llm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep)
        logits = out.logits  # (B, K, V)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1), ignore_index=IGNORE_INDEX)


def _cache_kwarg(llm: torch.nn.Module) -> str:
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def shared_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor, image_token_index: int) -> int:
    """Length of the token prefix all rows share, stopping before the first image or labelled position."""
    same = (input_ids == input_ids[:1]).all(0)  # (L,)
    stop = (input_ids == image_token_index).any(0) | (labels != IGNORE_INDEX).any(0)
    bad = (~same) | stop
    first_bad = int(bad.nonzero()[0, 0]) if bad.any() else input_ids.shape[1]
    return max(0, first_bad - 1)  # the position before a label must run with the rest


# StageSpec fields that do not change the trained weights (how often to save or log): free to differ on resume.
_RUNTIME_FIELDS = ("checkpoint_every", "log_every")


def check_stage_settings(phase: str, spec: StageSpec, saved_path: Path, what: str, stage: str = "") -> None:
    """Refuse (``ResumeConflict``) when ``spec`` differs from the settings saved at ``saved_path`` (a checkpoint's
    or a finished phase's ``stage.json``) in anything but how often it saves or logs."""
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    given = json.loads(json.dumps(asdict(spec), default=list))
    differ = [f"{k} {saved[k]!r} → {v!r}" for k, v in given.items() if k in saved and k not in _RUNTIME_FIELDS and saved[k] != v]
    if not differ:
        return
    flags = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "measurement_copies": "--measurement-copies"}
    named = sorted({flags[d.split()[0]] for d in differ if d.split()[0] in flags})
    raise ResumeConflict(
        f"{phase}: its {what} ({saved_path.parent}) was made with other settings than this invocation asks: {'; '.join(differ)}. "
        f"To continue or keep it, drop {', '.join(named) or 'the changed recipe fields'} (a resume reads the run's recipe.json); "
        f"to train {stage or phase} again with the new settings, add --force; or choose another --out.")


def latest_checkpoint(phase_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a phase (temporary folders are ignored)."""
    folder = Path(phase_dir) / "checkpoints"
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "recipe.json").is_file())
    return done[-1] if done else None


# ---- helpers ---------------------------------------------------------------------------------------
class _TrainState:
    """Step and loss history, saved with every checkpoint (``register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0
        self.history: list[list[float]] = []  # [step, loss, lr]
        self.probe_before: float | None = None
        self.seconds = 0.0  # training wall time of the earlier invocations (a resume adds its own)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": self.history, "probe_before": self.probe_before, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.history = [list(h) for h in state["history"]]
        self.probe_before = state.get("probe_before")
        self.seconds = float(state.get("seconds", 0.0))


_DATASETS: dict[tuple, ConversationDataset] = {}


def _dataset(path: Path, model: Any, tools: list[dict], system_prompt: str, recipe: Recipe, measurement_copies: int = 0,
             leave_out: tuple[str, ...] = ()) -> ConversationDataset:
    key = (str(path), path.stat().st_mtime, len(model.tokenizer), model.tokens_per_image, recipe.model.max_length, recipe.data.overlay_stand_in,
           measurement_copies, recipe.seed, leave_out)
    if key not in _DATASETS:
        _DATASETS[key] = ConversationDataset(path, model.tokenizer, system_prompt=system_prompt, tools=tools,
                                             image_token_index=model.image_token_index, tokens_per_image=model.tokens_per_image,
                                             max_length=recipe.model.max_length, overlay_stand_in=recipe.data.overlay_stand_in,
                                             measurement_copies=measurement_copies, seed=recipe.seed, leave_out=leave_out)
    return _DATASETS[key]


def _set_trainable(model: Any, spec: StageSpec) -> dict[str, int]:
    """Freeze everything, then unfreeze the parts ``spec.train`` names (LoRA adapters for the LM when
    ``spec.lora``); returns trainable parameter counts by part."""
    parts = {"projector": model.mm_projector, "llm": model.llm, "tower": model.vision_tower}
    unknown = set(spec.train) - set(parts)
    if unknown:
        raise TrainError(f"stage `train` parts must be among {sorted(parts)}, got {sorted(unknown)}.")
    for p in model.parameters():
        p.requires_grad_(False)
    if "llm" in spec.train and spec.lora is not None:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                          target_modules=list(spec.lora.target_modules), task_type="CAUSAL_LM")
        model.llm = get_peft_model(model.llm, lcfg)
        parts["llm"] = model.llm
    for name in spec.train:
        if name == "llm" and spec.lora is not None:
            continue  # peft already marked its adapters trainable
        for p in parts[name].parameters():
            p.requires_grad_(True)
    return {name: sum(p.numel() for p in mod.parameters() if p.requires_grad) for name, mod in parts.items()}


def _batch_items(step: int, spec: StageSpec, datasets: dict[str, ConversationDataset], seed: int, code: int) -> list[tuple[str, int]]:
    """The batch of ``step``: one data file drawn by the mixture weights, then ``batch_size`` records of
    it (one file per batch keeps lengths alike, so little padding). Depends on the step only, so a
    resumed run draws exactly the batches an uninterrupted one would."""
    rng = np.random.default_rng([seed, code, step])
    names = list(spec.mix)
    weights = np.asarray([spec.mix[n] for n in names], dtype=float)
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return [(name, int(i)) for i in rng.integers(len(datasets[name]), size=spec.batch_size)]


def _probe_batches(spec: StageSpec, datasets: dict[str, ConversationDataset], pixels: PixelCache, pad_id: int,
                   per_source: int = 8) -> list[dict[str, torch.Tensor]]:
    """Fixed batches (the first records of each data file of the mix) whose loss is measured before and
    after the phase: the mixture's per-step losses are too noisy to show progress on a short run."""
    return [collate([datasets[n][i] for i in range(min(per_source, len(datasets[n])))], pixels, pad_id) for n in spec.mix]


def _probe_loss(model: Any, batches: list[dict[str, torch.Tensor]], image_token_index: int, accelerator: Any) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            total += float(model(**batch, prefix_length=shared_prefix_length(batch["input_ids"], batch["labels"], image_token_index)))
    model.train()
    return total / max(len(batches), 1)


def _save_checkpoint(accelerator: Any, phase_dir: Path, step: int, recipe: Recipe, spec: StageSpec) -> None:
    folder = phase_dir / "checkpoints"
    final = folder / f"step_{step:06d}"
    tmp = folder / f"step_{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        recipe.save(tmp)
        (tmp / "stage.json").write_text(json.dumps(asdict(spec), indent=2, default=list) + "\n")
        os.replace(tmp, final)
        for old in sorted(p for p in folder.glob("step_*") if p.is_dir() and p != final and not p.name.endswith(".tmp"))[:-1]:
            shutil.rmtree(old, ignore_errors=True)  # keep the newest two


def _save_final(model: Any, final: Path, recipe: Recipe, spec: StageSpec) -> None:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    recipe.save(tmp)
    (tmp / "stage.json").write_text(json.dumps(asdict(spec), indent=2, default=list) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _phase_metrics(phase: str, spec: StageSpec, history: list[list[float]], seconds: float, steps_here: int, trainable: dict[str, int]) -> dict[str, Any]:
    losses = [h[1] for h in history]
    k = max(1, len(losses) // 10)
    return {
        "phase": phase, "steps": len(history), "batch_size": spec.batch_size, "lr": spec.lr,
        "train": list(spec.train), "lora": asdict(spec.lora) if spec.lora else None, "mix": spec.mix,
        "trainable_parameters": trainable,
        "loss_first": float(np.mean(losses[:k])) if losses else None, "loss_last": float(np.mean(losses[-k:])) if losses else None,
        "seconds_this_run": round(seconds, 1), "samples_per_second": round(steps_here * spec.batch_size / seconds, 2) if seconds > 0 else None,
        "history": history,
    }


def _stage_report(stage: str, stage_dir: Path, results: list[dict[str, Any]]) -> None:
    """``metrics.json`` and ``loss.png`` of a stage (its phases one after the other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stage_dir.mkdir(parents=True, exist_ok=True)
    summary = {"stage": stage, "phases": [{k: v for k, v in r.items() if k != "history"} for r in results]}
    _atomic_write(stage_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset = 0
    for r in results:
        h = np.asarray(r["history"], dtype=float)
        if len(h):
            ax.plot(h[:, 0] + offset, h[:, 1], lw=0.8, label=r["phase"])
            offset += int(h[-1, 0])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats/token)")
    ax.set_title(f"m3 train {stage}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(stage_dir / "loss.png", dpi=100)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
