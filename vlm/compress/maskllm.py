"""MaskLLM: learnable 2:4 masks (arXiv 2409.17481), trained end to end with the weights frozen.

Each prunable linear gets logits ``(out, in/4, 6)`` over the six 2:4 candidates of every group of 4
input weights. During training the weight is re-parametrised (``torch.nn.utils.parametrize``) as
``W ⊙ M̃`` with ``M̃ = Σ_k gumbel_softmax(κ·logits, τ)_k · candidate_k``; τ falls linearly 4 → 0.05
and κ rises 100 → 500. Only the logits train (AdamW) on the LM loss minus the regulariser
λ(1 − t/T)·Σ‖W ⊙ M̃‖², which keeps large weights. A one-shot mask (magnitude, Wanda, SparseGPT) or a
previously learned mask is a prior: logits += strength·std(logits)·(onehot(prior) − 1). The final
mask is the argmax candidate. The Gumbel mask sampling and the schedule are written by hand here:
no maintained library implements MaskLLM for Hugging Face models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from vlm.compress.calibration import lm_loss
from vlm.compress.errors import CompressError
from vlm.compress.targets import CANDIDATES_2_4, check_two_four, prunable_linears, resolve_lm

__all__ = ["MaskLLMConfig", "MaskLLMResult", "GumbelTwoFourMask", "train_maskllm", "masks_to_candidates"]

log = logging.getLogger(__name__)


@dataclass
class MaskLLMConfig:
    """MaskLLM hyper-parameters (paper defaults where the paper gives one)."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 5e-3  # AdamW on the logits only
    weight_decay: float = 0.0
    tau_start: float = 4.0
    tau_end: float = 0.05
    kappa_start: float = 100.0
    kappa_end: float = 500.0
    init_std: float = 0.01
    prior_strength: float = 3.0
    reg_lambda: float = 1e-5
    include_vision: bool = False
    seed: int = 0


@dataclass
class MaskLLMResult:
    """Learned masks (bool ``(out, in)``, True = kept) by layer name, and the loss per step."""

    masks: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    changed_from_prior: float | None = None  # fraction of groups whose candidate differs from the prior


def masks_to_candidates(mask: torch.Tensor) -> torch.Tensor:
    """Index (0-5) of each group's 2:4 candidate: bool ``(out, in)`` → long ``(out, in/4)``."""
    check_two_four(mask)
    bits = mask.reshape(mask.shape[0], -1, 4).to(torch.long) * torch.tensor([8, 4, 2, 1])
    codes = bits.sum(-1)  # 1100 → 12, 1010 → 10, 1001 → 9, 0110 → 6, 0101 → 5, 0011 → 3
    lookup = torch.full((16,), -1, dtype=torch.long)
    lookup[torch.tensor([12, 10, 9, 6, 5, 3])] = torch.arange(6)
    return lookup[codes]


class GumbelTwoFourMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ M``: a Gumbel-softmax soft 2:4 mask in training, the argmax mask in eval."""

    def __init__(self, shape: tuple[int, int], init_std: float = 0.01, prior: torch.Tensor | None = None,
                 prior_strength: float = 3.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        out_features, in_features = shape
        self.shape = (out_features, in_features)
        init = torch.randn(out_features, in_features // 4, 6, generator=generator) * init_std
        if prior is not None:
            onehot = F.one_hot(masks_to_candidates(prior.cpu()), 6).to(init.dtype)
            init += prior_strength * init.std() * (onehot - 1.0)
        self.logits = nn.Parameter(init)  # (out, in/4, 6)
        self.register_buffer("candidates", CANDIDATES_2_4.clone(), persistent=False)
        self.tau, self.kappa = 4.0, 100.0
        self.kept_sq: torch.Tensor | None = None  # Σ(W ⊙ M̃)² of the last training forward

    def soft_mask(self) -> torch.Tensor:
        """One Gumbel-softmax sample of the mask, ``(out, in)`` in [0, 1]."""
        probs = F.gumbel_softmax(self.kappa * self.logits, tau=self.tau, hard=False, dim=-1)
        return (probs @ self.candidates.to(probs.dtype)).reshape(self.shape)

    def hard_mask(self) -> torch.Tensor:
        """The argmax candidate of every group: bool ``(out, in)``."""
        return self.candidates[self.logits.argmax(-1)].reshape(self.shape).bool()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight * self.hard_mask().to(weight.dtype)
        masked = weight * self.soft_mask().to(weight.dtype)
        self.kept_sq = masked.float().pow(2).sum()
        return masked


def train_maskllm(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    config: MaskLLMConfig | None = None,
    prior: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> MaskLLMResult:
    """Learn 2:4 masks for every prunable linear of ``model``'s LM. The model's weights are not changed.

    ``batches`` yields token blocks ``(B, T)``; ``prior`` maps layer names to bool masks (a one-shot
    mask, or a general-domain MaskLLM mask for a domain run). Apply the result with
    :func:`vlm.compress.targets.apply_masks`.
    """
    config = config or MaskLLMConfig()
    if config.steps < 1:
        raise CompressError(f"MaskLLM steps must be >= 1, got {config.steps}.")
    lm = resolve_lm(model)
    layers = prunable_linears(model, include_vision=config.include_vision)
    if prior is not None and (unknown := sorted(set(prior) - set(layers))):
        raise CompressError(f"Prior masks name layers the model does not have (first: {unknown[0]!r}).")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # the Gumbel noise
    grad_state = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params: dict[str, GumbelTwoFourMask] = {}
    for name, module in layers.items():
        para = GumbelTwoFourMask(tuple(module.weight.shape), config.init_std, (prior or {}).get(name),
                                 config.prior_strength, gen).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", para, unsafe=True)
        params[name] = para
    optimizer = torch.optim.AdamW([p.logits for p in params.values()], lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    was_training = lm.training
    lm.train()
    # at low Gumbel temperatures the soft masks underflow into denormal floats: seen here as 2 s → 30 s per step on a CPU
    torch.set_flush_denormal(True)  # (torch cannot report the previous setting; its default, off, is restored after)
    try:
        for step in tqdm(range(config.steps), desc="maskllm", disable=not progress):
            frac = step / max(config.steps - 1, 1)
            for para in params.values():
                para.tau = config.tau_start + (config.tau_end - config.tau_start) * frac
                para.kappa = config.kappa_start + (config.kappa_end - config.kappa_start) * frac
            ids = next(batches)
            loss = lm_loss(lm, ids)
            reg = torch.stack([p.kept_sq for p in params.values() if p.kept_sq is not None]).sum()
            total = loss - config.reg_lambda * (1.0 - step / config.steps) * reg
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        masks = {name: para.hard_mask().detach().cpu() for name, para in params.items()}
    finally:
        for name, module in layers.items():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for p, flag in grad_state.items():
            p.requires_grad_(flag)
        lm.train(was_training)
        torch.set_flush_denormal(False)
    changed = None
    if prior is not None:
        diffs = [(masks_to_candidates(masks[n]) != masks_to_candidates(prior[n])).float().mean() for n in prior]
        changed = float(torch.stack(diffs).mean())
    log.info("MaskLLM: %d layers, final loss %.4f", len(masks), losses[-1])
    return MaskLLMResult(masks=masks, losses=losses, changed_from_prior=changed)
