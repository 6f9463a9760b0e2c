"""Activation-based importance of attention heads and MLP neurons, and the permutation that puts every layer
in importance order so that a width prefix keeps the most important units (Flextron / Minitron).

Importance of a unit is the mean L2 norm, over the calibration tokens (padding excluded), of what it adds to
the residual stream: for head h, ``‖W_o[:, h] · attn_h(x)‖``; for neuron i, ``|act_i(x)| · ‖W_down[:, i]‖``.
A KV group's importance is the sum of its query heads' (grouped-query attention: a group moves with its query
heads, so the query-to-KV mapping survives the permutation). Permuting rows of q/k/v/gate/up and the matching
columns of o/down leaves the LM's function unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlm.compress.calibration import CalibData, forward_batches
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.widths import ElasticSpace, attention_parts, mlp_parts
from vlm.compress.targets import decoder_layers, resolve_lm

__all__ = ["Importance", "Ordering", "activation_importance", "apply_ordering", "importance_ordering"]


@dataclass
class Importance:
    """Per layer: ``heads`` ``(H,)``, ``groups`` ``(G,)`` (KV groups) and ``mlp`` ``(I,)`` mean contribution norms."""

    heads: list[torch.Tensor]
    groups: list[torch.Tensor]
    mlp: list[torch.Tensor]
    tokens: int


@dataclass
class Ordering:
    """Per layer: the original query-head index at each new position (``heads``, whole KV groups together) and
    the original neuron index at each new position (``mlp``). JSON-friendly lists."""

    heads: list[list[int]]
    mlp: list[list[int]]

    def to_dict(self) -> dict:
        return {"heads": self.heads, "mlp": self.mlp}

    @classmethod
    def from_dict(cls, raw: dict) -> Ordering:
        return cls(heads=[list(map(int, h)) for h in raw["heads"]], mlp=[list(map(int, m)) for m in raw["mlp"]])


@torch.no_grad()
def activation_importance(model: nn.Module, data: CalibData, batch_size: int = 16, max_batches: int | None = None) -> Importance:
    """Mean contribution norm of every head and MLP neuron over the tokens of ``data`` (token blocks ``(N, T)``
    or prepared VLM batches with ``inputs_embeds`` and ``attention_mask``)."""
    lm = resolve_lm(model)
    space = ElasticSpace(lm)
    layers = decoder_layers(lm)
    heads = [torch.zeros(space.num_heads, dtype=torch.float64) for _ in layers]
    mlp = [torch.zeros(space.intermediate, dtype=torch.float64) for _ in layers]
    mask: list[torch.Tensor | None] = [None]  # the current batch's token mask (B, T), set before each forward

    def token_weights(x: torch.Tensor) -> torch.Tensor:
        m = mask[0]
        return torch.ones(x.shape[:2], dtype=x.dtype) if m is None else m.to(x.dtype)

    def on_o_proj(i):
        def fn(module, args):
            x = args[0]  # (B, T, H·hd): the heads' outputs, concatenated
            b, t, _ = x.shape
            w = module.weight.view(module.weight.shape[0], space.num_heads, space.head_dim)  # (hidden, H, hd)
            per_head = torch.einsum("bthd,ehd->bthe", x.view(b, t, space.num_heads, space.head_dim).float(), w.float())
            norms = per_head.norm(dim=-1)  # (B, T, H)
            heads[i] += (norms * token_weights(x)[..., None]).sum((0, 1)).double()
        return fn

    def on_down(i):
        def fn(module, args):
            a = args[0]  # (B, T, I): the gated activations
            col = module.weight.float().norm(dim=0)  # (I,)
            mlp[i] += ((a.float().abs() * col) * token_weights(a)[..., None]).sum((0, 1)).double()
        return fn

    handles = []
    for i, layer in enumerate(layers):
        _, _, _, o = attention_parts(layer)
        _, _, down = mlp_parts(layer)
        handles.append(o.register_forward_pre_hook(on_o_proj(i)))
        handles.append(down.register_forward_pre_hook(on_down(i)))
    was_training = lm.training
    lm.eval()
    tokens = 0
    try:
        for n, batch in enumerate(forward_batches(data, batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            mask[0] = batch.get("attention_mask")
            ref = batch.get("input_ids", batch.get("inputs_embeds"))
            tokens += int(mask[0].sum()) if mask[0] is not None else ref.shape[0] * ref.shape[1]
            lm(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        lm.train(was_training)
    if tokens == 0:
        raise ElasticError("Importance needs calibration tokens; the data gave none. Pass conversations with --data.")
    heads = [h / tokens for h in heads]
    groups = [h.view(space.num_kv_heads, space.heads_per_group).sum(-1) for h in heads]
    return Importance(heads=heads, groups=groups, mlp=[m / tokens for m in mlp], tokens=tokens)


def importance_ordering(importance: Importance, space: ElasticSpace) -> Ordering:
    """Descending-importance order per layer: KV groups by group score, query heads inside a group by their own."""
    r = space.heads_per_group
    heads_order, mlp_order = [], []
    for head_scores, group_scores, neuron_scores in zip(importance.heads, importance.groups, importance.mlp):
        order = []
        for g in torch.argsort(group_scores, descending=True, stable=True).tolist():
            inside = torch.argsort(head_scores[g * r : (g + 1) * r], descending=True, stable=True).tolist()
            order.extend(g * r + j for j in inside)
        heads_order.append(order)
        mlp_order.append(torch.argsort(neuron_scores, descending=True, stable=True).tolist())
    return Ordering(heads=heads_order, mlp=mlp_order)


@torch.no_grad()
def apply_ordering(model: nn.Module, ordering: Ordering) -> None:
    """Permute every layer's heads and neurons in place into ``ordering`` (the LM computes the same function)."""
    lm = resolve_lm(model)
    space = ElasticSpace(lm)
    layers = decoder_layers(lm)
    if len(ordering.heads) != len(layers) or len(ordering.mlp) != len(layers):
        raise ElasticError(f"An importance ordering must have one entry per layer: the LM has {len(layers)}, the ordering "
                           f"{len(ordering.heads)} / {len(ordering.mlp)}. Compute it again for this model.")
    hd, r = space.head_dim, space.heads_per_group
    for layer, head_order, mlp_order in zip(layers, ordering.heads, ordering.mlp):
        if sorted(head_order) != list(range(space.num_heads)) or sorted(mlp_order) != list(range(space.intermediate)):
            raise ElasticError("An importance ordering is not a permutation of this LM's heads / neurons; compute it again for this model.")
        groups = [head_order[p * r] // r for p in range(space.num_kv_heads)]
        if any(head_order[p] // r != groups[p // r] for p in range(space.num_heads)):
            raise ElasticError("An importance ordering splits a KV group's query heads; keep each group's heads together.")
        q_rows = torch.tensor([h * hd + d for h in head_order for d in range(hd)])
        kv_rows = torch.tensor([g * hd + d for g in groups for d in range(hd)])
        neurons = torch.tensor(mlp_order)
        q, k, v, o = attention_parts(layer)
        gate, up, down = mlp_parts(layer)
        for lin, rows in ((q, q_rows), (k, kv_rows), (v, kv_rows), (gate, neurons), (up, neurons)):
            lin.weight.copy_(lin.weight[rows])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[rows])
        o.weight.copy_(o.weight[:, q_rows])
        down.weight.copy_(down.weight[:, neurons])
