"""Nested widths of a Hugging Face decoder LM (Flextron, arXiv 2406.10260): every attention and MLP linear
computes with a prefix of its weight, so a smaller width is a sub-network of a larger one (weight sharing).

A *plan* gives each decoder layer a :class:`LayerWidth` — query heads kept (whole KV groups, so grouped-query
attention keeps its query-to-KV ratio) and MLP neurons kept. :func:`make_elastic` swaps the layers' linears for
:class:`ElasticLinear` (same parameters, same state-dict names, so the LM saves and loads as before);
:func:`set_plan` / :func:`plan_applied` choose the active widths; :func:`count_params` gives the parameter count
of a plan without building it. Widths are prefixes, so the LM must first be permuted into importance order
(:mod:`vlm.compress.elastic.importance`) for a prefix to be the best sub-network of its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm.compress.elastic.errors import ElasticError
from vlm.compress.targets import decoder_layers, resolve_lm

__all__ = [
    "ElasticConfig",
    "ElasticLinear",
    "ElasticSpace",
    "LayerWidth",
    "attention_parts",
    "count_params",
    "current_plan",
    "make_elastic",
    "mlp_parts",
    "plan_applied",
    "set_plan",
]

Plan = list["LayerWidth"]


@dataclass
class ElasticConfig:
    """The width choices of every layer, as fractions of the full width (1.0 must be among them)."""

    head_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    mlp_fractions: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    mlp_multiple: int = 8  # MLP widths are rounded up to a multiple of this (matrix kernels like aligned sizes)

    def __post_init__(self) -> None:
        self.head_fractions = tuple(float(f) for f in self.head_fractions)
        self.mlp_fractions = tuple(float(f) for f in self.mlp_fractions)
        for name, fractions in (("head_fractions", self.head_fractions), ("mlp_fractions", self.mlp_fractions)):
            if not fractions or any(not 0.0 < f <= 1.0 for f in fractions) or 1.0 not in fractions:
                raise ElasticError(f"Elastic {name} must be fractions in (0, 1] that include 1.0, got {fractions}.")
        if self.mlp_multiple < 1:
            raise ElasticError(f"Elastic mlp_multiple must be >= 1, got {self.mlp_multiple}.")


@dataclass(frozen=True)
class LayerWidth:
    """Active width of one decoder layer: ``heads`` query heads (a multiple of the heads per KV group) and
    ``mlp`` intermediate neurons."""

    heads: int
    mlp: int


class ElasticLinear(nn.Linear):
    """``nn.Linear`` that uses the prefix ``weight[:out_active, :in_active]`` (``None`` = all); the parameters
    and their names are those of the linear it replaces."""

    in_active: int | None = None
    out_active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_active) → (..., out_active)
        out, inp = self.out_active or self.out_features, self.in_active or self.in_features
        bias = self.bias[:out] if self.bias is not None else None
        return F.linear(x, self.weight[:out, :inp], bias)

    def active_numel(self) -> int:
        """Parameters in use at the current width (weight prefix and bias prefix)."""
        out, inp = self.out_active or self.out_features, self.in_active or self.in_features
        return out * inp + (out if self.bias is not None else 0)


def attention_parts(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """``(q_proj, k_proj, v_proj, o_proj)`` of a Llama-style decoder layer."""
    attn = getattr(layer, "self_attn", None)
    parts = tuple(getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if attn is None or not all(isinstance(p, nn.Linear) for p in parts):
        raise ElasticError(f"Elastic widths need Llama-style attention (self_attn.q_proj/k_proj/v_proj/o_proj linears); "
                           f"found {type(attn).__name__} in {type(layer).__name__}. Use a Llama / Mistral / Qwen2-style LM.")
    return parts  # type: ignore[return-value]


def mlp_parts(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """``(gate_proj, up_proj, down_proj)`` of a Llama-style decoder layer."""
    mlp = getattr(layer, "mlp", None)
    parts = tuple(getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    if mlp is None or not all(isinstance(p, nn.Linear) for p in parts):
        raise ElasticError(f"Elastic widths need a gated MLP (mlp.gate_proj/up_proj/down_proj linears); found "
                           f"{type(mlp).__name__} in {type(layer).__name__}. Use a Llama / Mistral / Qwen2-style LM.")
    return parts  # type: ignore[return-value]


class ElasticSpace:
    """The width choices of one LM under an :class:`ElasticConfig`: query-head counts per level (whole KV
    groups) and MLP neuron counts per level, the same for every layer."""

    def __init__(self, model: nn.Module, config: ElasticConfig | None = None) -> None:
        self.config = config or ElasticConfig()
        lm = resolve_lm(model)
        cfg = lm.config
        self.num_layers = len(decoder_layers(lm))
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.intermediate = int(cfg.intermediate_size)
        self.heads_per_group = self.num_heads // self.num_kv_heads
        groups = sorted({min(self.num_kv_heads, max(1, math.ceil(f * self.num_kv_heads - 1e-9))) for f in self.config.head_fractions})
        self.head_levels = [g * self.heads_per_group for g in groups]  # query heads, ascending
        m = self.config.mlp_multiple
        self.mlp_levels = sorted({min(self.intermediate, max(m, math.ceil(f * self.intermediate / m - 1e-9) * m)) for f in self.config.mlp_fractions})

    def full(self) -> Plan:
        return [LayerWidth(self.num_heads, self.intermediate)] * self.num_layers

    def uniform(self, heads: int, mlp: int) -> Plan:
        """Every layer at ``heads`` query heads and ``mlp`` neurons (both must be levels)."""
        plan = [LayerWidth(heads, mlp)] * self.num_layers
        self.check(plan)
        return plan

    def smallest(self) -> Plan:
        return self.uniform(self.head_levels[0], self.mlp_levels[0])

    def sample(self, generator: torch.Generator) -> Plan:
        """A plan with each layer's head and MLP level drawn independently and uniformly."""
        h = torch.randint(len(self.head_levels), (self.num_layers,), generator=generator).tolist()
        m = torch.randint(len(self.mlp_levels), (self.num_layers,), generator=generator).tolist()
        return [LayerWidth(self.head_levels[a], self.mlp_levels[b]) for a, b in zip(h, m)]

    def check(self, plan: Plan) -> None:
        """Raise :class:`ElasticError` unless ``plan`` has one width per layer, each a level of this space."""
        if len(plan) != self.num_layers:
            raise ElasticError(f"A width plan needs one width per decoder layer: the LM has {self.num_layers}, the plan {len(plan)}.")
        for i, w in enumerate(plan):
            if w.heads not in self.head_levels or w.mlp not in self.mlp_levels:
                raise ElasticError(f"Layer {i} width {w} is not a level of this elastic LM: heads must be one of "
                                   f"{self.head_levels}, mlp one of {self.mlp_levels}. Route again for this model.")

    def to_dict(self) -> dict:
        return {"head_levels": self.head_levels, "mlp_levels": self.mlp_levels, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim, "intermediate": self.intermediate,
                "num_layers": self.num_layers}


def make_elastic(model: nn.Module) -> nn.Module:
    """Swap every decoder layer's attention and MLP linears for :class:`ElasticLinear` in place (the parameter
    tensors are kept, not copied); idempotent. Returns the LM, at full width."""
    lm = resolve_lm(model)
    for layer in decoder_layers(lm):
        attention_parts(layer), mlp_parts(layer)  # a clear error on an unsupported layer
        for owner, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")), (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                lin = getattr(owner, name)
                if isinstance(lin, ElasticLinear):
                    continue
                elastic = ElasticLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
                elastic.weight = lin.weight
                if lin.bias is not None:
                    elastic.bias = lin.bias
                elastic.train(lin.training)
                setattr(owner, name, elastic)
    return lm


def set_plan(model: nn.Module, plan: Plan | None, space: ElasticSpace | None = None) -> None:
    """Make ``plan`` the active widths of the (elastic) LM; ``None`` restores the full width."""
    lm = resolve_lm(model)
    space = space or ElasticSpace(lm)
    plan = plan if plan is not None else space.full()
    space.check(plan)
    for layer, w in zip(decoder_layers(lm), plan):
        q, k, v, o = attention_parts(layer)
        gate, up, down = mlp_parts(layer)
        if not all(isinstance(p, ElasticLinear) for p in (q, k, v, o, gate, up, down)):
            raise ElasticError("The LM's linears are not elastic yet; call make_elastic(lm) before choosing widths.")
        full_heads, full_mlp = w.heads == space.num_heads, w.mlp == space.intermediate
        q_out = None if full_heads else w.heads * space.head_dim
        kv_out = None if full_heads else (w.heads // space.heads_per_group) * space.head_dim
        q.out_active, k.out_active, v.out_active, o.in_active = q_out, kv_out, kv_out, q_out
        gate.out_active = up.out_active = down.in_active = None if full_mlp else w.mlp


def current_plan(model: nn.Module, space: ElasticSpace | None = None) -> Plan:
    """The widths the elastic LM computes with now."""
    lm = resolve_lm(model)
    space = space or ElasticSpace(lm)
    plan = []
    for layer in decoder_layers(lm):
        q, *_ = attention_parts(layer)
        gate, *_ = mlp_parts(layer)
        q_out = getattr(q, "out_active", None)
        plan.append(LayerWidth(q_out // space.head_dim if q_out else space.num_heads, getattr(gate, "out_active", None) or space.intermediate))
    return plan


@contextmanager
def plan_applied(model: nn.Module, plan: Plan | None, space: ElasticSpace | None = None) -> Iterator[None]:
    """Run a block with ``plan`` active; the previous widths come back afterwards."""
    before = current_plan(model, space)
    set_plan(model, plan, space)
    try:
        yield
    finally:
        set_plan(model, before, space)


def count_params(model: nn.Module, plan: Plan | None = None, space: ElasticSpace | None = None) -> int:
    """Parameters of the LM's sub-network ``plan`` (``None``: full), embeddings, norms and head included
    (tied weights once) — the count a plain LM exported at that width has."""
    lm = resolve_lm(model)
    space = space or ElasticSpace(lm)
    plan = plan if plan is not None else space.full()
    space.check(plan)
    total = sum(p.numel() for p in lm.parameters())  # unique parameters (tied embeddings counted once)
    hd, hidden = space.head_dim, int(lm.config.hidden_size)
    for layer, w in zip(decoder_layers(lm), plan):
        q, k, _, _ = attention_parts(layer)
        gate, up, _ = mlp_parts(layer)
        dropped_heads, dropped_groups = space.num_heads - w.heads, (space.num_heads - w.heads) // space.heads_per_group
        total -= dropped_heads * hd * (hidden + (q.bias is not None))  # q rows
        total -= 2 * dropped_groups * hd * (hidden + (k.bias is not None))  # k and v rows
        total -= dropped_heads * hd * hidden  # o columns
        dropped = space.intermediate - w.mlp
        total -= dropped * (2 * hidden + (gate.bias is not None) + (up.bias is not None)) + dropped * hidden
    return total
