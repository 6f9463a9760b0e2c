"""Compression for small on-prem builds: MaskLLM learnable 2:4 sparsity, one-shot baselines (magnitude,
Wanda, SparseGPT), minifinetuning (MFT) for site adaptation, and depth pruning with recovery.

Every function takes an ``nn.Module`` causal LM; given the m3 VLM it works on the VLM's ``.llm``.
"""

from vlm.compress.depth import DepthConfig, angular_importance, load_pruned_lm, loo_importance, prune_depth, save_pruned_lm
from vlm.compress.errors import CompressError
from vlm.compress.maskllm import MaskLLMConfig, MaskLLMResult, train_maskllm
from vlm.compress.masks_io import load_masks, save_masks
from vlm.compress.mft import FinetuneConfig, MFTLoss, finetune, mft_targets
from vlm.compress.oneshot import OneShotConfig, prune_oneshot
from vlm.compress.targets import apply_masks, check_two_four, prunable_linears, resolve_lm

__all__ = [
    "CompressError", "MaskLLMConfig", "MaskLLMResult", "train_maskllm", "OneShotConfig", "prune_oneshot",
    "MFTLoss", "mft_targets", "FinetuneConfig", "finetune", "DepthConfig", "angular_importance", "loo_importance",
    "prune_depth", "save_pruned_lm", "load_pruned_lm", "save_masks", "load_masks", "apply_masks",
    "check_two_four", "prunable_linears", "resolve_lm",
]
