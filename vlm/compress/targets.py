"""Which layers compression touches, and the 2:4 mask helpers every method shares.

All functions take an ``nn.Module`` language model; given an m3 / VILA model they work on its ``.llm``.
The LM head and embeddings are never pruned (MaskLLM, SparseGPT and Wanda all keep them dense).
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.compress.errors import CompressError

__all__ = [
    "resolve_lm",
    "decoder_layers",
    "prunable_linears",
    "apply_masks",
    "check_two_four",
    "sparsity_of",
    "CANDIDATES_2_4",
]

# The six 2:4 candidates of MaskLLM, in the paper's order: 1100, 1010, 1001, 0110, 0101, 0011.
CANDIDATES_2_4 = torch.tensor(
    [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.float32
)


def resolve_lm(model: nn.Module) -> nn.Module:
    """The causal LM inside ``model``: its ``.llm`` when it has one (the VLM), else ``model`` itself."""
    lm = getattr(model, "llm", None)
    return lm if isinstance(lm, nn.Module) else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face decoder-only LM (``model.model.layers`` for Llama-likes)."""
    lm = resolve_lm(model)
    base = getattr(lm, "model", lm)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise CompressError(
            f"Depth pruning and layer-wise calibration need a decoder-only LM with `model.layers`; "
            f"found {type(lm).__name__} without one. Pass a Hugging Face causal LM (e.g. LlamaForCausalLM)."
        )
    return layers


def prunable_linears(model: nn.Module, include_vision: bool = False, multiple_of: int = 4) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of the LM that 2:4 sparsity applies to, by qualified name (relative to the LM).

    Excluded: the LM head, and layers whose input width is not a multiple of ``multiple_of``. With
    ``include_vision`` and a VLM, the vision tower's linears come too, named ``vision_tower.…``.
    """
    lm = resolve_lm(model)
    out: dict[str, nn.Linear] = {}
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    for name, module in lm.named_modules():
        if isinstance(module, nn.Linear) and module is not head and not name.endswith("lm_head"):
            if module.in_features % multiple_of == 0:
                out[name] = module
    tower = getattr(model, "vision_tower", None) if include_vision else None
    if isinstance(tower, nn.Module):
        for name, module in tower.named_modules():
            if isinstance(module, nn.Linear) and module.in_features % multiple_of == 0:
                out[f"vision_tower.{name}"] = module
    if not out:
        raise CompressError(f"No prunable nn.Linear layers found in {type(lm).__name__}; expected a transformer LM.")
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place: ``W ← W ⊙ M`` for each named layer. Masks are bool, ``(out, in)``."""
    layers = prunable_linears(model, include_vision=any(k.startswith("vision_tower.") for k in masks))
    missing = sorted(set(masks) - set(layers))
    if missing:
        raise CompressError(
            f"Masks name layers the model does not have (first: {missing[0]!r}); expected names like "
            f"{next(iter(layers))!r}. Use masks computed for this model architecture."
        )
    for name, mask in masks.items():
        weight = layers[name].weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise CompressError(f"Mask for {name} must have shape {tuple(weight.shape)}, got {tuple(mask.shape)}.")
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def check_two_four(mask: torch.Tensor, name: str = "mask") -> None:
    """Raise :class:`CompressError` unless every group of 4 consecutive input weights keeps exactly 2."""
    if mask.dim() != 2 or mask.shape[1] % 4:
        raise CompressError(f"{name} must be 2-D with an input width divisible by 4, got shape {tuple(mask.shape)}.")
    kept = mask.reshape(mask.shape[0], -1, 4).to(torch.int64).sum(-1)
    if not bool((kept == 2).all()):
        bad = int((kept != 2).sum())
        raise CompressError(f"{name} is not 2:4: {bad} groups of 4 do not keep exactly 2 weights. Recompute the mask.")


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable linears (0.5 for a 2:4 model)."""
    layers = prunable_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return zeros / total
