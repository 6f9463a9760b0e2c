"""Depth pruning (arXiv 2407.16286): rank blocks or attention sublayers, remove them, optionally recover.

Importance of block i: angular distance 1 − cos(h_in, h_out) averaged over tokens, or the leave-one-out
increase in LM loss when it is skipped. The same two scores exist for the attention sublayer alone
(h_out = h_in + attention). A removed layer is either dropped (identity) or replaced by a recovery map
fitted by least squares on calibration activations: an additive bias (the mean residual update) or a
low-rank linear map (reduced-rank regression). Pruned LMs are saved with a ``depth.json`` recipe; load
them with :func:`load_pruned_lm`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vlm.compress.calibration import forward_batches, mean_loss
from vlm.compress.errors import CompressError
from vlm.compress.targets import decoder_layers, resolve_lm

__all__ = [
    "DepthConfig", "ResidualAdapter", "angular_importance", "loo_importance", "prune_depth",
    "save_pruned_lm", "load_pruned_lm", "RECIPE_FILENAME",
]

log = logging.getLogger(__name__)
RECIPE_FILENAME = "depth.json"
KINDS = ("block", "attention")
RECOVERIES = ("none", "bias", "lowrank")


@dataclass
class DepthConfig:
    """What to remove (indices in the original LM) and how to recover it."""

    blocks: list[int] = field(default_factory=list)
    attention: list[int] = field(default_factory=list)
    recovery: str = "none"  # none | bias | lowrank
    rank: int = 8  # low-rank recovery rank
    ridge: float = 1e-3  # least-squares regulariser, relative to mean(diag XᵀX)


class ResidualAdapter(nn.Module):
    """Stand-in for a removed block or attention sublayer: ``delta(x) = x·A·B + b`` (A, B absent for bias-only).

    As a block it returns ``h + delta(h)``; as attention it returns ``(delta(x), None)``, which the decoder
    layer adds to the residual. With neither weights nor bias it is the identity / zero.
    """

    def __init__(self, hidden: int, role: str, rank: int = 0, bias: bool = False) -> None:
        super().__init__()
        self.role = role
        self.down = nn.Linear(hidden, rank, bias=False) if rank else None
        self.up = nn.Linear(rank, hidden, bias=False) if rank else None
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        if self.down is not None:
            out = out + self.up(self.down(x))
        if self.bias is not None:
            out = out + self.bias
        return out

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.role == "block":
            return hidden_states + self.delta(hidden_states)
        return self.delta(hidden_states), None


@torch.no_grad()
def angular_importance(model: nn.Module, ids: torch.Tensor, batch_size: int = 16) -> dict[str, list[float]]:
    """Mean over tokens of 1 − cos(h_in, h_out) per block and per attention sublayer (``{"block": [...], "attention": [...]}``)."""
    sums = {kind: torch.zeros(len(decoder_layers(model)), dtype=torch.float64) for kind in KINDS}
    count = [0]

    def on_layer(i):
        def fn(_m, args, kwargs, out):
            h_in = _hidden_arg(args, kwargs)
            h_out = out[0] if isinstance(out, tuple) else out
            sums["block"][i] += float((1 - F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)).sum())
            if i == 0:
                count[0] += h_in.shape[0] * h_in.shape[1]
        return fn

    def on_attn(i, layer):
        def fn(_m, args, kwargs, out):
            # the sublayer's residual stream: input of the block → input + attention output
            h_in = layer._m3_h_in
            sums["attention"][i] += float((1 - F.cosine_similarity(h_in.float(), (h_in + out[0]).float(), dim=-1)).sum())
        return fn

    def keep_input(_m, args, kwargs):
        _m._m3_h_in = _hidden_arg(args, kwargs)

    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        handles.append(layer.register_forward_pre_hook(keep_input, with_kwargs=True))
        handles.append(layer.register_forward_hook(on_layer(i), with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(on_attn(i, layer), with_kwargs=True))
    try:
        _run(model, ids, batch_size)
    finally:
        for h in handles:
            h.remove()
        for layer in decoder_layers(model):
            layer.__dict__.pop("_m3_h_in", None)
    return {kind: (s / max(count[0], 1)).tolist() for kind, s in sums.items()}


@torch.no_grad()
def loo_importance(model: nn.Module, ids: torch.Tensor, kind: str = "block", batch_size: int = 16) -> list[float]:
    """Leave-one-out importance: increase in mean loss (nats / token) on ``ids`` when each block / attention is skipped."""
    if kind not in KINDS:
        raise CompressError(f"Importance kind must be one of {KINDS}, got {kind!r}.")
    layers = decoder_layers(model)
    base = mean_loss(model, ids, batch_size)
    hidden = resolve_lm(model).config.hidden_size
    scores = []
    for i in range(len(layers)):
        if kind == "block":
            original, layers[i] = layers[i], ResidualAdapter(hidden, "block")
            scores.append(mean_loss(model, ids, batch_size) - base)
            layers[i] = original
        else:
            original = layers[i].self_attn
            layers[i].self_attn = ResidualAdapter(hidden, "attention")
            scores.append(mean_loss(model, ids, batch_size) - base)
            layers[i].self_attn = original
    return scores


@torch.no_grad()
def prune_depth(model: nn.Module, config: DepthConfig, calib_ids: torch.Tensor | None = None, batch_size: int = 16) -> nn.Module:
    """Replace the configured blocks / attention sublayers of the LM by :class:`ResidualAdapter` in place.

    Recovery maps are fitted on ``calib_ids`` ``(N, T)`` activations of the model before pruning.
    Returns the LM (its config records the recipe as ``m3_depth``).
    """
    if config.recovery not in RECOVERIES:
        raise CompressError(f"Depth recovery must be one of {RECOVERIES}, got {config.recovery!r}.")
    lm = resolve_lm(model)
    layers = decoder_layers(lm)
    for i in [*config.blocks, *config.attention]:
        if not 0 <= i < len(layers):
            raise CompressError(f"Layer index {i} is out of range: the LM has {len(layers)} blocks (0-{len(layers) - 1}).")
    if set(config.blocks) & set(config.attention):
        raise CompressError("A layer is listed both as a removed block and a removed attention; list it once.")
    stats = {}
    if config.recovery != "none":
        if calib_ids is None:
            raise CompressError("Depth recovery needs calibration tokens; pass --data or use --recovery none.")
        stats = _collect_residual_stats(lm, config, calib_ids, batch_size)
    hidden = lm.config.hidden_size
    for kind, indices in (("block", config.blocks), ("attention", config.attention)):
        for i in indices:
            adapter = _fit_adapter(stats.get((kind, i)), hidden, kind, config)
            if kind == "block":
                layers[i] = adapter
            else:
                layers[i].self_attn = adapter
    _renumber_attention(lm)
    lm.config.m3_depth = asdict(config)
    return lm


def save_pruned_lm(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Save a pruned LM: config + ``depth.json`` recipe + safetensors of the remaining weights (and adapters)."""
    lm = resolve_lm(model)
    folder = Path(folder)
    recipe = getattr(lm.config, "m3_depth", None)
    lm.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if recipe:
        (folder / RECIPE_FILENAME).write_text(json.dumps(recipe, indent=2))
    return folder


def load_pruned_lm(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a causal LM folder; when it holds a ``depth.json`` recipe, rebuild the pruned structure first."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    recipe_path = folder / RECIPE_FILENAME
    if not recipe_path.is_file():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    config = DepthConfig(**json.loads(recipe_path.read_text()))
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    hidden = lm.config.hidden_size
    layers = decoder_layers(lm)
    for i in config.blocks:
        layers[i] = _empty_adapter(hidden, "block", config)
    for i in config.attention:
        layers[i].self_attn = _empty_adapter(hidden, "attention", config)
    _renumber_attention(lm)
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name.startswith("model"):
            state.update(load_file(str(shard)))
    missing, unexpected = lm.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise CompressError(
            f"Pruned LM in {folder} does not match its depth.json: missing {missing[:3]}, unexpected {unexpected[:3]}. "
            "Re-export the model with `m3 compress depth`."
        )
    if lm.config.tie_word_embeddings:
        lm.tie_weights()
    lm.config.m3_depth = asdict(config)
    return lm.to(dtype) if dtype is not None else lm


def _hidden_arg(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _run(model: nn.Module, ids: torch.Tensor, batch_size: int) -> None:
    lm = resolve_lm(model)
    was_training = lm.training
    lm.eval()
    for batch in forward_batches(ids, batch_size):  # token blocks or VLM embedding batches (padding included)
        lm(**batch, use_cache=False)
    lm.train(was_training)


def _collect_residual_stats(lm: nn.Module, config: DepthConfig, ids: torch.Tensor, batch_size: int) -> dict:
    """Sufficient statistics (n, Σx, Σd, XᵀX, XᵀD) in float64 for each layer to be replaced: x its input, d its residual update."""
    stats: dict = {}
    handles = []

    def add(key, x, d):
        x, d = x.reshape(-1, x.shape[-1]).double(), d.reshape(-1, d.shape[-1]).double()
        s = stats.setdefault(key, {"n": 0, "sx": 0.0, "sd": 0.0, "xx": 0.0, "xd": 0.0})
        s["n"] += x.shape[0]
        s["sx"] = s["sx"] + x.sum(0)
        s["sd"] = s["sd"] + d.sum(0)
        s["xx"] = s["xx"] + x.T @ x
        s["xd"] = s["xd"] + x.T @ d

    layers = decoder_layers(lm)
    for i in config.blocks:
        def block_hook(_m, args, kwargs, out, i=i):
            h = _hidden_arg(args, kwargs)
            add(("block", i), h, (out[0] if isinstance(out, tuple) else out) - h)
        handles.append(layers[i].register_forward_hook(block_hook, with_kwargs=True))
    for i in config.attention:
        def attn_hook(_m, args, kwargs, out, i=i):
            add(("attention", i), _hidden_arg(args, kwargs), out[0])
        handles.append(layers[i].self_attn.register_forward_hook(attn_hook, with_kwargs=True))
    try:
        _run(lm, ids, batch_size)
    finally:
        for h in handles:
            h.remove()
    return stats


def _fit_adapter(stat: dict | None, hidden: int, kind: str, config: DepthConfig) -> ResidualAdapter:
    adapter = _empty_adapter(hidden, kind, config)
    if stat is None:
        return adapter
    n = stat["n"]
    mean_x, mean_d = stat["sx"] / n, stat["sd"] / n
    if config.recovery == "bias":
        adapter.bias.copy_(mean_d.float())
        return adapter
    # reduced-rank regression on centred data: W = (Sxx + λI)⁻¹ Sxd, then project onto the top-r directions of the fit
    sxx = stat["xx"] - n * torch.outer(mean_x, mean_x)
    sxd = stat["xd"] - n * torch.outer(mean_x, mean_d)
    ridge = config.ridge * torch.diagonal(sxx).mean() * torch.eye(hidden, dtype=sxx.dtype)
    w = torch.linalg.solve(sxx + ridge, sxd)  # (hidden, hidden)
    _, eigvec = torch.linalg.eigh(w.T @ sxx @ w)  # covariance of the fitted values
    v_r = eigvec[:, -config.rank :]  # (hidden, r)
    a = w @ v_r
    adapter.down.weight.copy_(a.T.float())
    adapter.up.weight.copy_(v_r.float())
    adapter.bias.copy_((mean_d - mean_x @ a @ v_r.T).float())
    return adapter


def _empty_adapter(hidden: int, kind: str, config: DepthConfig) -> ResidualAdapter:
    rank = config.rank if config.recovery == "lowrank" else 0
    return ResidualAdapter(hidden, kind, rank=rank, bias=config.recovery != "none")


def _renumber_attention(lm: nn.Module) -> None:
    """Give the remaining attention modules consecutive KV-cache slots (layer 0 must hold a real attention)."""
    slot = 0
    for layer in decoder_layers(lm):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = slot
            slot += 1
