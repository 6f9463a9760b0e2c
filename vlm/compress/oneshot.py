"""One-shot 2:4 pruning baselines: magnitude, Wanda and SparseGPT, calibrated on text.

All three return masks in the same form MaskLLM uses (bool ``(out, in)``, True = kept), so they are
both baselines and MaskLLM priors. Calibration is sequential by default, as in the SparseGPT and Wanda
papers: block ``i`` is calibrated on the outputs of the already-pruned blocks ``< i``.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from vlm.compress.calibration import calibration_size, forward_batches
from vlm.compress.errors import CompressError
from vlm.compress.targets import prunable_linears, resolve_lm

__all__ = [
    "OneShotConfig",
    "METHODS",
    "prune_oneshot",
    "magnitude_mask",
    "wanda_mask",
    "sparsegpt_prune",
    "collect_grams",
    "topk_two_four",
]

log = logging.getLogger(__name__)
METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class OneShotConfig:
    """One-shot 2:4 pruning. ``damp`` is SparseGPT's dampening as a fraction of mean(diag H)."""

    method: str = "sparsegpt"  # magnitude | wanda | sparsegpt
    damp: float = 0.01
    block_size: int = 128  # SparseGPT column block (a multiple of 4)
    sequential: bool = True  # calibrate block i on the pruned outputs of blocks < i
    update_weights: bool = True  # SparseGPT's optimal-brain-surgeon update of the kept weights
    batch_size: int = 8


def topk_two_four(score: torch.Tensor) -> torch.Tensor:
    """Keep the 2 highest-scoring of each 4 consecutive inputs: bool mask of ``score``'s shape ``(out, in)``."""
    groups = score.reshape(score.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(score.shape)


def magnitude_mask(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask keeping the two largest |W| of each group of 4 inputs. ``weight``: ``(out, in)``."""
    return topk_two_four(weight.detach().float().abs())


def wanda_mask(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Wanda 2:4 mask: score |W_ij|·‖X_j‖₂, where ‖X_j‖₂² is (proportional to) diag of the Gram ``(in, in)``."""
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    return topk_two_four(weight.detach().float().abs() * norms[None, :])


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor, gram: torch.Tensor, damp: float = 0.01, block_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT 2:4 on one layer. ``gram`` ∝ XXᵀ ``(in, in)``. Returns (mask, updated weight) ``(out, in)``.

    Prunes by w²/[H⁻¹]²_jj within each group of 4, propagating each pruning error onto the remaining
    columns (OBS update with the upper Cholesky factor of H⁻¹), column blocks of ``block_size``.
    """
    if block_size % 4:
        raise CompressError(f"SparseGPT block_size must be a multiple of 4, got {block_size}.")
    w = weight.detach().clone().float()
    h = gram.detach().clone().float()
    rows, cols = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        m1 = torch.zeros_like(w1, dtype=torch.bool)
        d1 = torch.diagonal(hinv1)
        for j in range(i2 - i1):
            if j % 4 == 0:  # choose the 2 cheapest of this group with the weights as updated so far
                cost = w1[:, j : j + 4] ** 2 / d1[j : j + 4] ** 2
                m1.scatter_(1, j + cost.topk(2, dim=1, largest=False).indices, True)
            col = w1[:, j]
            q = torch.where(m1[:, j], torch.zeros_like(col), col)
            q1[:, j] = q
            err = (col - q) / d1[j]
            w1[:, j:] -= err[:, None] * hinv1[j, j:][None, :]
            err1[:, j] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = m1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return ~pruned, w.to(weight.dtype)


@torch.no_grad()
def collect_grams(
    model: nn.Module, layers: dict[str, nn.Linear], calib_ids: torch.Tensor, batch_size: int = 8,
    stop_after: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Input Gram matrices H = (2/N)·Σ x xᵀ ``(in, in)`` (float32) of ``layers`` over the calibration tokens.

    With ``stop_after``, each forward stops once that module has run (calibrating one block at a time).
    """
    lm = resolve_lm(model)
    grams = {n: torch.zeros(m.in_features, m.in_features) for n, m in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def fn(_module, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            n_old, n_new = counts[name], counts[name] + x.shape[0]
            grams[name].mul_(n_old / n_new).add_(x.T @ x, alpha=2.0 / n_new)
            counts[name] = n_new
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(_raise_stop))
    was_training = lm.training
    lm.eval()
    try:
        for batch in forward_batches(calib_ids, batch_size):
            try:
                lm(**batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
        lm.train(was_training)
    return grams


def prune_oneshot(
    model: nn.Module, calib_ids: torch.Tensor | None, config: OneShotConfig | None = None, inplace: bool = True
) -> dict[str, torch.Tensor]:
    """Prune every prunable linear of the LM to 2:4 with ``config.method``; return the masks by layer name.

    ``calib_ids`` ``(N, T)`` token blocks (not needed for magnitude). With ``inplace=False`` the model is
    left untouched (masks are computed on a copy), e.g. to make a MaskLLM prior.
    """
    config = config or OneShotConfig()
    if config.method not in METHODS:
        raise CompressError(f"One-shot method must be one of {METHODS}, got {config.method!r}.")
    if config.method != "magnitude" and calibration_size(calib_ids) == 0:
        raise CompressError(f"{config.method} needs calibration tokens; pass --data with a few hundred samples.")
    lm = resolve_lm(model) if inplace else copy.deepcopy(resolve_lm(model))
    layers = prunable_linears(lm)
    masks: dict[str, torch.Tensor] = {}
    for group, stop in _calibration_groups(lm, layers, config.sequential):
        grams = {} if config.method == "magnitude" else collect_grams(lm, group, calib_ids, config.batch_size, stop)
        for name, module in group.items():
            w = module.weight
            if config.method == "magnitude":
                mask = magnitude_mask(w)
            elif config.method == "wanda":
                mask = wanda_mask(w, grams[name])
            else:
                mask, new_w = sparsegpt_prune(w, grams[name], config.damp, config.block_size)
                if config.update_weights:
                    with torch.no_grad():
                        w.copy_(new_w)
            with torch.no_grad():
                w.mul_(mask.to(w.dtype))
            masks[name] = mask
        log.debug("pruned %d layers with %s", len(group), config.method)
    return masks


class _StopForward(Exception):
    """Raised inside a hook to end a calibration forward early (control flow, never surfaces)."""


def _raise_stop(*_args):
    raise _StopForward


def _calibration_groups(lm: nn.Module, layers: dict[str, nn.Linear], sequential: bool):
    """(layers, stop module) groups: one per decoder block when sequential, else all at once."""
    if not sequential:
        yield layers, None
        return
    by_block: dict[int, dict[str, nn.Linear]] = {}
    rest: dict[str, nn.Linear] = {}
    for name, module in layers.items():
        match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        (by_block.setdefault(int(match.group(1)), {}) if match else rest)[name] = module
    blocks = getattr(getattr(lm, "model", lm), "layers", None)
    for index in sorted(by_block):
        yield by_block[index], blocks[index] if blocks is not None else None
    if rest:
        yield rest, None
