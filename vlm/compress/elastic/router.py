"""Static router: per-layer widths of an elastic LM for a budget of parameters, weight memory or measured latency.

A budget is ``params=N`` (a count, or a fraction of the full LM when <= 1), ``memory_mb=M`` (weights in
float16) or ``latency_ms=T`` (one forward of ``seq_len`` tokens on this machine, predicted from a
:class:`LatencyTable` measured per layer and width). The router scores widths by the LM loss on calibration
data: ``uniform`` routing tries every (heads, MLP) level pair shared by all layers (what a plain exported
model can hold) and keeps the best that fits; per-layer routing measures each layer's loss sensitivity to each
level alone, then lowers, greedily, the (layer, part) whose next level costs the least loss per unit of budget
saved, until the plan fits — and keeps the uniform plan instead when that measures better.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vlm.compress.calibration import CalibData, mean_loss
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.widths import ElasticSpace, LayerWidth, count_params, plan_applied
from vlm.compress.targets import decoder_layers, resolve_lm

__all__ = ["BUDGET_KINDS", "Budget", "LatencyTable", "RouteResult", "measure_latency", "parse_budget", "plan_cost", "route"]

BUDGET_KINDS = ("params", "memory_mb", "latency_ms")
_BYTES_FLOAT16 = 2


@dataclass(frozen=True)
class Budget:
    kind: str  # params | memory_mb | latency_ms
    value: float

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_budget(text: str) -> Budget:
    """``"params=0.5"``, ``"params=1.6e6"``, ``"memory_mb=4"`` or ``"latency_ms=2.5"`` → :class:`Budget`."""
    kind, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not sep or kind.strip() not in BUDGET_KINDS or number <= 0:
        raise ElasticError(f"A budget must look like params=0.5 (fraction of the LM, or a count), memory_mb=4 or latency_ms=2.5; "
                           f"got {text!r}.")
    return Budget(kind.strip(), number)


@dataclass
class LatencyTable:
    """Median milliseconds of one forward of ``seq_len`` tokens (batch 1) on this machine: ``attention_ms[l][k]``
    at head level k, ``mlp_ms[l][k]`` at MLP level k, and ``fixed_ms`` for the rest (embeddings, norms, head)."""

    seq_len: int
    head_levels: list[int]
    mlp_levels: list[int]
    attention_ms: list[list[float]]
    mlp_ms: list[list[float]]
    fixed_ms: float
    threads: int = field(default_factory=torch.get_num_threads)

    def predict(self, plan: list[LayerWidth]) -> float:
        """Predicted milliseconds of a forward at ``plan``."""
        return self.fixed_ms + sum(self.attention_ms[i][self.head_levels.index(w.heads)] + self.mlp_ms[i][self.mlp_levels.index(w.mlp)]
                                   for i, w in enumerate(plan))

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def measure_latency(model: nn.Module, space: ElasticSpace, seq_len: int = 128, repeats: int = 7) -> LatencyTable:
    """Time every layer's attention at each head level and MLP at each MLP level on random hidden states, and the
    full forward, on this machine (median of ``repeats`` after one warm-up)."""
    lm = resolve_lm(model)
    hidden = torch.randn(1, seq_len, lm.config.hidden_size, dtype=next(lm.parameters()).dtype)
    positions = torch.arange(seq_len)[None]
    rotary = getattr(getattr(lm, "model", lm), "rotary_emb", None)
    if rotary is None:
        raise ElasticError("Latency tables need a Llama-style LM with model.rotary_emb; found none. Use a params or memory_mb budget.")
    cos_sin = rotary(hidden, positions)
    attention, mlp = [], []
    for i, layer in enumerate(decoder_layers(lm)):
        row_a, row_m = [], []
        for heads in space.head_levels:
            plan = [LayerWidth(heads, space.intermediate) if j == i else w for j, w in enumerate(space.full())]
            with plan_applied(lm, plan, space):
                row_a.append(_median_ms(lambda attn=layer.self_attn: attn(hidden, position_embeddings=cos_sin, attention_mask=None), repeats))
        for neurons in space.mlp_levels:
            plan = [LayerWidth(space.num_heads, neurons) if j == i else w for j, w in enumerate(space.full())]
            with plan_applied(lm, plan, space):
                row_m.append(_median_ms(lambda mlp=layer.mlp: mlp(hidden), repeats))
        attention.append(row_a)
        mlp.append(row_m)
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    with plan_applied(lm, None, space):
        total = _median_ms(lambda: lm(input_ids=ids, use_cache=False), repeats)
    fixed = max(0.0, total - sum(a[-1] + m[-1] for a, m in zip(attention, mlp)))
    return LatencyTable(seq_len, list(space.head_levels), list(space.mlp_levels), attention, mlp, fixed)


def plan_cost(budget_kind: str, model: nn.Module, space: ElasticSpace, plan: list[LayerWidth], table: LatencyTable | None = None) -> float:
    """The cost of ``plan`` in the budget's unit (parameters, MiB of float16 weights, predicted ms)."""
    if budget_kind == "params":
        return float(count_params(model, plan, space))
    if budget_kind == "memory_mb":
        return count_params(model, plan, space) * _BYTES_FLOAT16 / 2**20
    if budget_kind == "latency_ms":
        if table is None:
            raise ElasticError("A latency_ms budget needs a latency table; measure one with measure_latency first.")
        return table.predict(plan)
    raise ElasticError(f"Budget kind must be one of {BUDGET_KINDS}, got {budget_kind!r}.")


@dataclass
class RouteResult:
    """The chosen plan, its cost in the budget's unit, its parameters and its calibration loss (nats / token)."""

    plan: list[LayerWidth]
    budget: Budget
    cost: float
    params: int
    loss: float
    uniform: bool
    candidates: list[dict] = field(default_factory=list)  # what else was measured (uniform level pairs, greedy result)

    def to_dict(self) -> dict:
        return {"plan": [asdict(w) for w in self.plan], "budget": str(self.budget), "cost": self.cost, "params": self.params,
                "loss": self.loss, "uniform": self.uniform, "candidates": self.candidates}


@torch.no_grad()
def route(model: nn.Module, space: ElasticSpace, budget: Budget, data: CalibData, *, uniform: bool = False,
          table: LatencyTable | None = None) -> RouteResult:
    """The widths with the lowest calibration loss on ``data`` whose cost fits ``budget``.

    uniform: the same widths in every layer (exportable as a plain model folder); otherwise per-layer widths."""
    lm = resolve_lm(model)
    limit = budget.value * count_params(lm, None, space) if budget.kind == "params" and budget.value <= 1 else budget.value

    def cost(plan):
        return plan_cost(budget.kind, lm, space, plan, table)

    def loss(plan):
        with plan_applied(lm, plan, space):
            return mean_loss(lm, data)

    best, candidates = None, []
    for h in space.head_levels:
        for m in space.mlp_levels:
            plan = space.uniform(h, m)
            if cost(plan) <= limit:
                row = {"heads": h, "mlp": m, "cost": cost(plan), "loss": loss(plan)}
                candidates.append(row)
                if best is None or row["loss"] < best[1]:
                    best = (plan, row["loss"], True)
    if not uniform:
        greedy = _greedy(lm, space, limit, cost, loss)
        if greedy is not None:
            greedy_loss = loss(greedy)
            candidates.append({"greedy": [asdict(w) for w in greedy], "cost": cost(greedy), "loss": greedy_loss})
            if best is None or greedy_loss < best[1]:
                best = (greedy, greedy_loss, False)
    if best is None:
        smallest = cost(space.smallest())
        raise ElasticError(f"No width of this elastic LM fits the budget {budget}: the smallest costs {smallest:.4g} "
                           f"({budget.kind}), the budget allows {limit:.4g}. Give a larger budget.")
    plan, best_loss, is_uniform = best
    return RouteResult(plan=plan, budget=budget, cost=cost(plan), params=count_params(lm, plan, space), loss=best_loss,
                       uniform=is_uniform, candidates=candidates)


def _greedy(lm, space: ElasticSpace, limit: float, cost, loss) -> list[LayerWidth] | None:
    """Per-layer widths by greedy descent on separately measured sensitivities (None when nothing fits)."""
    full = space.full()
    base = loss(full)
    levels = {"heads": space.head_levels, "mlp": space.mlp_levels}
    sens = {}  # (layer, part, level) → loss increase with only that change
    for i in range(space.num_layers):
        for part, values in levels.items():
            for v in values[:-1]:
                plan = list(full)
                plan[i] = LayerWidth(v, full[i].mlp) if part == "heads" else LayerWidth(full[i].heads, v)
                sens[(i, part, v)] = loss(plan) - base
    plan = list(full)
    while cost(plan) > limit:
        moves = []
        for i, w in enumerate(plan):
            for part, values in levels.items():
                now = getattr(w, part)
                k = values.index(now)
                if k == 0:
                    continue
                lower = values[k - 1]
                trial = list(plan)
                trial[i] = LayerWidth(lower, w.mlp) if part == "heads" else LayerWidth(w.heads, lower)
                saved = cost(plan) - cost(trial)
                extra = sens[(i, part, lower)] - sens.get((i, part, now), 0.0)
                moves.append((max(extra, 0.0) / max(saved, 1e-12), trial))
        if not moves:
            return None
        plan = min(moves, key=lambda m: m[0])[1]
    return plan


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
