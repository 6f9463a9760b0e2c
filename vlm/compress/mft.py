"""Minifinetuning (MFT, arXiv 2506.15702): fine-tuning by corrective self-distillation.

The teacher is the frozen model before fine-tuning. Per token, with p = softmax(teacher / T), label y
and teacher argmax a: if a ≠ y, α = (p_a − p_y + τ)/(1 + p_a − p_y); else c = 1 if p_y > 1 − τ else
p_y + τ, α = (c − p_y)/(1 − p_y). The target q = (1 − α)·p + α·onehot(y) puts y ahead of every other
token by τ; the student learns q with KL(q ‖ student)·T². No replay data. Labels equal to
``ignore_index`` (-100) carry no loss. The corrected-target arithmetic is written here so it runs in
any training loop without ModelOpt; the tests check it against ``modelopt.torch.distill.MFTLoss``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vlm.compress.errors import CompressError
from vlm.compress.targets import resolve_lm

__all__ = ["MFTLoss", "mft_targets", "FinetuneConfig", "FinetuneResult", "finetune"]

log = logging.getLogger(__name__)
_EPS = 1e-7  # keeps α finite where p_a − p_y → −1 or p_y → 1


def mft_targets(teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float = 0.2, temperature: float = 1.0) -> torch.Tensor:
    """Corrected teacher distributions ``(N, V)`` from teacher logits ``(N, V)`` and labels ``(N,)`` (all valid)."""
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)
    argmax = p.argmax(dim=-1)
    p_a = p.gather(1, argmax[:, None]).squeeze(1)
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    wrong = argmax != labels
    alpha_wrong = (p_a - p_y + tau) / (1.0 + p_a - p_y + _EPS)
    capped = torch.where(p_y > 1.0 - tau, torch.ones_like(p_y), p_y + tau)
    alpha_right = (capped - p_y) / (1.0 - p_y + _EPS)
    alpha = torch.where(wrong, alpha_wrong, alpha_right)[:, None]
    onehot = F.one_hot(labels, p.shape[-1]).to(p.dtype)
    return (1.0 - alpha) * p + alpha * onehot


class MFTLoss(nn.Module):
    """MFT loss: mean over labelled tokens of KL(q ‖ softmax(student / T))·T².

    ``forward(student_logits, teacher_logits, labels)``: logits ``(..., V)``, labels ``(...)`` aligned with
    the logits (``labels[..., t]`` is the target of ``logits[..., t, :]``); with ``shift_labels=True`` the
    usual causal-LM shift is applied here (labels = input ids).
    """

    def __init__(self, tau: float = 0.2, temperature: float = 1.0, ignore_index: int = -100, shift_labels: bool = False) -> None:
        super().__init__()
        if not 0.0 <= tau <= 1.0:
            raise CompressError(f"MFT tau must be in [0, 1], got {tau}.")
        if temperature <= 0:
            raise CompressError(f"MFT temperature must be > 0, got {temperature}.")
        self.tau, self.temperature, self.ignore_index, self.shift_labels = tau, temperature, ignore_index, shift_labels

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise CompressError(f"Student and teacher logits must match, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
        if self.shift_labels:
            student_logits, teacher_logits, labels = student_logits[..., :-1, :], teacher_logits[..., :-1, :], labels[..., 1:]
        vocab = student_logits.shape[-1]
        labels = labels.reshape(-1)
        keep = labels != self.ignore_index
        if not bool(keep.any()):
            return student_logits.sum() * 0.0  # no labelled token: zero loss that still has a graph
        student = student_logits.reshape(-1, vocab)[keep]
        with torch.no_grad():
            target = mft_targets(teacher_logits.reshape(-1, vocab)[keep], labels[keep], self.tau, self.temperature)
        log_q = F.log_softmax(student.float() / self.temperature, dim=-1)
        kl = F.kl_div(log_q, target, reduction="sum") / student.shape[0]
        return kl * self.temperature**2


@dataclass
class FinetuneConfig:
    """Site adaptation: ``method`` "mft" (MFT loss against the frozen pre-fine-tuning model) or "standard" (CE)."""

    method: str = "mft"
    steps: int = 200
    lr: float = 3e-4
    weight_decay: float = 0.0
    tau: float = 0.2
    temperature: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class FinetuneResult:
    losses: list[float] = field(default_factory=list)


def finetune(model: nn.Module, batches: Iterator[torch.Tensor], config: FinetuneConfig | None = None, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``model``'s LM in place on token blocks ``(B, T)`` (or dict batches from
    ``calibration.vlm_batches``) from ``batches`` (AdamW, constant lr)."""
    config = config or FinetuneConfig()
    if config.method not in ("mft", "standard"):
        raise CompressError(f"Fine-tune method must be 'mft' or 'standard', got {config.method!r}.")
    lm = resolve_lm(model)
    torch.manual_seed(config.seed)
    teacher = None
    if config.method == "mft":
        teacher = copy.deepcopy(lm).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    loss_fn = MFTLoss(config.tau, config.temperature, shift_labels=True)
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    was_training = lm.training
    lm.train()
    result = FinetuneResult()
    for _ in tqdm(range(config.steps), desc=f"finetune-{config.method}", disable=not progress):
        batch = next(batches)
        if isinstance(batch, dict):  # VLM conversations: embeddings, answer-only labels
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels = batch["labels"]
        else:
            inputs, labels = {"input_ids": batch}, batch
        if teacher is None:
            loss = lm(**inputs, labels=labels).loss
        else:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
            loss = loss_fn(lm(**inputs).logits, teacher_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        result.losses.append(float(loss.detach()))
    lm.train(was_training)
    return result
