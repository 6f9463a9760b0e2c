"""Elastic distillation (Flextron's elastic continued training): the frozen original LM teaches sub-networks
of one elastic LM, so every width is trained at once and they all share weights.

Before training, the LM is permuted into importance order (outputs unchanged) and made elastic. Each step
draws one batch and trains, with gradients summed over: the full width, the smallest width (the "sandwich"
rule), and ``random_subnets`` plans whose per-layer widths are drawn uniformly. Each sub-network's loss is
``kd_weight · KL(teacher ‖ sub) · T² + task_weight · CE(labels)`` over the scored tokens (the assistant's
turns of a conversation; every token of a text block).

Resume follows the training stages' rules: checkpoints in ``<run>/checkpoints/step_NNNNNN`` (written to a
``.tmp`` folder then renamed, the newest two kept), a checkpoint of an unfinished run continues only with
``resume=True``, one made with other settings is refused. The batch order and the sub-networks drawn depend
only on the seed and the step, so a resumed run reaches the weights an uninterrupted one does.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vlm.compress.calibration import CalibData, iterate_batches
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.importance import Ordering, activation_importance, apply_ordering, importance_ordering
from vlm.compress.elastic.widths import ElasticConfig, ElasticSpace, make_elastic, set_plan
from vlm.compress.targets import resolve_lm

__all__ = ["CHECKPOINTS", "DistillConfig", "DistillResult", "latest_checkpoint", "train_elastic"]

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
_STATE, _SETTINGS = "state.pt", "flextron.json"
_RUNTIME_FIELDS = ("checkpoint_every",)  # settings that do not change the trained weights


@dataclass
class DistillConfig:
    """Elastic distillation settings; saved with every checkpoint and with the trained model."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    kd_weight: float = 1.0  # weight of KL(teacher ‖ sub-network)
    task_weight: float = 1.0  # weight of the task cross-entropy on the labels
    temperature: float = 1.0
    random_subnets: int = 1  # sub-networks with random per-layer widths per step, besides full and smallest
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    importance_batches: int = 16  # calibration batches for the importance ordering
    head_fractions: tuple[float, ...] = ElasticConfig.head_fractions
    mlp_fractions: tuple[float, ...] = ElasticConfig.mlp_fractions
    mlp_multiple: int = ElasticConfig.mlp_multiple

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ElasticError(f"Elastic distillation needs steps >= 1 and batch_size >= 1, got {self.steps} and {self.batch_size}.")
        if self.kd_weight < 0 or self.task_weight < 0 or self.kd_weight + self.task_weight == 0:
            raise ElasticError(f"kd_weight and task_weight must be >= 0 and not both 0, got {self.kd_weight} and {self.task_weight}.")
        if self.temperature <= 0:
            raise ElasticError(f"Distillation temperature must be > 0, got {self.temperature}.")
        self.head_fractions, self.mlp_fractions = tuple(self.head_fractions), tuple(self.mlp_fractions)

    def elastic(self) -> ElasticConfig:
        return ElasticConfig(self.head_fractions, self.mlp_fractions, self.mlp_multiple)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class DistillResult:
    """What a call did: ``status`` ("trained", "resumed at step N", "stopped at step N"), the ordering applied,
    the loss history ``[step, full, smallest, random mean]`` (nats / scored token) and the training seconds."""

    ordering: Ordering
    space: ElasticSpace
    history: list[list[float]] = field(default_factory=list)
    status: str = "trained"
    step: int = 0
    seconds: float = 0.0


def train_elastic(model: nn.Module, data: CalibData, run_dir: str | Path, config: DistillConfig | None = None, *,
                  resume: bool = False, stop_after: int | None = None, progress: bool = True) -> DistillResult:
    """Turn ``model``'s LM into an elastic LM in place and train it by elastic distillation on ``data`` (token
    blocks ``(N, T)`` or prepared VLM conversation batches); checkpoints go to ``run_dir/checkpoints``.

    stop_after: end this call after that many steps (a checkpoint is written), e.g. to split a long run.
    On return the LM is at full width, in importance order, with :class:`ElasticLinear` layers."""
    config = config or DistillConfig()
    lm = resolve_lm(model)
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise ElasticError(f"{run_dir} already holds checkpoint {ckpt.name} of an earlier, unfinished elastic run; pass --resume "
                           "to continue it, or choose another --out folder.")
    saved = json.loads((ckpt / _SETTINGS).read_text()) if ckpt is not None else None
    if saved is not None:
        _check_settings(saved["config"], config, ckpt)
        ordering = Ordering.from_dict(saved["ordering"])
    else:
        ordering = importance_ordering(activation_importance(lm, data, config.batch_size, config.importance_batches), ElasticSpace(lm))
    apply_ordering(lm, ordering)
    teacher = copy.deepcopy(lm).eval()  # the original function (the permutation does not change it)
    for p in teacher.parameters():
        p.requires_grad_(False)
    make_elastic(lm)
    space = ElasticSpace(lm, config.elastic())
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start, history, seconds_before = 0, [], 0.0
    if ckpt is not None:
        state = torch.load(ckpt / _STATE, map_location="cpu", weights_only=True)
        lm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, seconds_before = int(state["step"]), [list(h) for h in state["history"]], float(state["seconds"])
        log.info("elastic distillation: resuming from %s (step %d of %d)", ckpt.name, start, config.steps)
    batches = iterate_batches(data, config.batch_size, seed=config.seed)
    for _ in range(start):  # the batches the earlier invocations used
        next(batches)
    was_training = lm.training
    lm.train()
    t0 = time.perf_counter()
    last = config.steps if stop_after is None else min(config.steps, start + stop_after)
    bar = tqdm(total=config.steps, initial=start, desc="flextron", unit="step", disable=not progress)
    step = start
    for step in range(start + 1, last + 1):
        inputs, labels = _split(next(batches))
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        plans = [None, space.smallest(), *(space.sample(gen) for _ in range(config.random_subnets))]
        losses = []
        for plan in plans:
            set_plan(lm, plan, space)
            loss = _elastic_loss(lm(**inputs).logits, teacher_logits, labels, config)
            (loss / len(plans)).backward()
            losses.append(float(loss.detach()))
        set_plan(lm, None, space)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append([step, losses[0], losses[1], sum(losses[2:]) / max(len(losses) - 2, 1)])
        bar.update(1)
        bar.set_postfix(full=f"{losses[0]:.3f}", smallest=f"{losses[1]:.3f}")
        if (step % config.checkpoint_every == 0 or step == last) and step < config.steps:
            _save_checkpoint(run_dir, step, lm, optimizer, history, seconds_before + time.perf_counter() - t0, config, ordering)
    bar.close()
    lm.train(was_training)
    seconds = seconds_before + time.perf_counter() - t0
    if step >= config.steps:
        status = f"resumed at step {start}" if start else "trained"
    else:
        status = f"stopped at step {step}"
    return DistillResult(ordering=ordering, space=space, history=history, status=status, step=step, seconds=seconds)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of an elastic run (temporary folders ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / _SETTINGS).is_file())
    return done[-1] if done else None


def _split(batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if isinstance(batch, dict):  # VLM conversations: embeddings, answer-only labels
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    return {"input_ids": batch}, batch


def _elastic_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    """kd · KL(teacher ‖ student)·T² + task · CE over the scored next-token positions; logits ``(B, T, V)``."""
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != -100
    if not bool(keep.any()):
        return logits.sum() * 0.0  # nothing scored: a zero loss that still has a graph
    student = logits[:, :-1][keep].float()  # (N, V)
    loss = config.task_weight * F.cross_entropy(student, targets[keep]) if config.task_weight else student.sum() * 0.0
    if config.kd_weight:
        t = config.temperature
        teacher = F.log_softmax(teacher_logits[:, :-1][keep].float() / t, dim=-1)
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), teacher, log_target=True, reduction="batchmean")
        loss = loss + config.kd_weight * kl * t**2
    return loss


def _check_settings(saved: dict, config: DistillConfig, ckpt: Path) -> None:
    given = config.to_dict()
    differ = [f"{k} {saved[k]!r} → {v!r}" for k, v in given.items() if k in saved and k not in _RUNTIME_FIELDS and saved[k] != v]
    if differ:
        raise ElasticError(f"Checkpoint {ckpt} of this elastic run was made with other settings than this invocation asks: "
                           f"{'; '.join(differ)}. Resume with the run's settings, or choose another --out to start afresh.")


def _save_checkpoint(run_dir: Path, step: int, lm: nn.Module, optimizer, history: list, seconds: float, config: DistillConfig,
                     ordering: Ordering) -> None:
    folder = run_dir / CHECKPOINTS
    final, tmp = folder / f"step_{step:06d}", folder / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"model": lm.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history, "seconds": seconds},
               tmp / _STATE)
    (tmp / _SETTINGS).write_text(json.dumps({"config": config.to_dict(), "ordering": ordering.to_dict(), "step": step}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in folder.glob("step_*") if p.is_dir() and p != final and not p.name.endswith(".tmp"))[:-1]:
        shutil.rmtree(old, ignore_errors=True)  # keep the newest two
