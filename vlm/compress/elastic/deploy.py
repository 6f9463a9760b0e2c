"""Elastic model folders and the deployment of one sub-network as a plain model folder.

An elastic model folder is the source folder's layout (VILA: ``config.json``, ``llm/``, ``vision_tower/``,
``mm_projector/``; or a bare LM folder) with the LM in importance order at full width — so the ordinary loader
reads it as the full model — and ``llm/flextron.json`` (the width levels, the ordering, the training record).
:func:`load_elastic` gives back the elastic LM. :func:`export_subnetwork` routes a uniform width plan for a
budget, slices the weight prefixes into a plain Hugging Face LM of that size (the ordinary loader builds every
layer from one config, so exported widths are the same in every layer), and writes a model folder with a model
card of its own measured figures and a checksum manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from vlm.compress.build_files import finish_model_folder
from vlm.compress.calibration import CalibData, mean_loss
from vlm.compress.elastic.errors import ElasticError
from vlm.compress.elastic.router import Budget, RouteResult, measure_latency, route
from vlm.compress.elastic.widths import ElasticConfig, ElasticSpace, LayerWidth, make_elastic
from vlm.compress.targets import decoder_layers, resolve_lm

__all__ = ["FLEXTRON_FILENAME", "export_subnetwork", "extract_subnetwork", "llm_folder", "load_elastic", "save_elastic"]

FLEXTRON_FILENAME = "flextron.json"
SUBNETWORK_FILENAME = "flextron_subnetwork.json"
_NOT_COPIED = ("llm", "manifest.json", "model_card.md", "eval_metrics.json", "checkpoints", "flextron_loss.png")  # describe the source, not this model


def llm_folder(root: str | Path) -> Path:
    """The LM folder of a model folder: ``root/llm`` for the VILA layout, else ``root``."""
    root = Path(root)
    return root / "llm" if (root / "llm" / "config.json").is_file() else root


def save_elastic(src_root: str | Path, lm: nn.Module, tokenizer, out: str | Path, record: dict) -> Path:
    """Write the elastic model folder ``out`` (source layout, LM at full width, ``flextron.json`` = ``record``)."""
    src_root, out = Path(src_root), Path(out)
    src_llm = llm_folder(src_root)
    out_llm = out / "llm" if src_llm != src_root else out
    if src_llm != src_root:
        shutil.copytree(src_root, out, ignore=shutil.ignore_patterns(*_NOT_COPIED), dirs_exist_ok=True)
    _save_lm(resolve_lm(lm), tokenizer, src_llm, out_llm)
    (out_llm / FLEXTRON_FILENAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out_llm


def load_elastic(root: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, ElasticSpace, dict]:
    """The elastic LM of an elastic model folder (at full width), its width space and its ``flextron.json``."""
    from transformers import AutoModelForCausalLM

    llm_dir = llm_folder(root)
    record_path = llm_dir / FLEXTRON_FILENAME
    if not record_path.is_file():
        raise ElasticError(f"{root} is not an elastic model folder: {record_path} is missing. Train one with "
                           "`m3 compress flextron --model M --data D --out O`.")
    record = json.loads(record_path.read_text())
    lm = make_elastic(AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype).eval())
    cfg = record["config"]
    space = ElasticSpace(lm, ElasticConfig(cfg["head_fractions"], cfg["mlp_fractions"], cfg["mlp_multiple"]))
    return lm, space, record


@torch.no_grad()
def extract_subnetwork(model: nn.Module, space: ElasticSpace, plan: list[LayerWidth]) -> nn.Module:
    """A plain Hugging Face LM (same class) holding the weight prefixes of the uniform ``plan``."""
    from transformers import AutoModelForCausalLM

    lm = resolve_lm(model)
    space.check(plan)
    if len(set(plan)) != 1:
        raise ElasticError(f"A plain model folder holds one width for every layer (one config builds them all); this plan has "
                           f"{len(set(plan))} different widths. Route with uniform widths for export.")
    width = plan[0]
    config = type(lm.config).from_dict({**lm.config.to_dict(), "num_attention_heads": width.heads, "head_dim": space.head_dim,
                                        "num_key_value_heads": width.heads // space.heads_per_group, "intermediate_size": width.mlp})
    small = AutoModelForCausalLM.from_config(config).to(next(lm.parameters()).dtype).eval()
    target = small.state_dict()
    state = {name: tensor[tuple(slice(0, s) for s in target[name].shape)].clone() for name, tensor in lm.state_dict().items() if name in target}
    missing, unexpected = small.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise ElasticError(f"The sub-network does not map onto {type(small).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    if getattr(small.config, "tie_word_embeddings", False):
        small.tie_weights()
    if len(decoder_layers(small)) != len(plan):
        raise ElasticError(f"The exported LM has {len(decoder_layers(small))} layers, the plan {len(plan)}.")
    return small


def export_subnetwork(elastic_root: str | Path, out: str | Path, budget: Budget, data: CalibData, *,
                      heldout: CalibData | None = None, latency_seq_len: int = 128, dtype: str = "float16") -> tuple[Path, RouteResult]:
    """Route a uniform plan for ``budget`` on ``data`` and write that sub-network of the elastic model folder
    ``elastic_root`` as a plain model folder ``out`` (new or empty) with ``model_card.md`` and ``manifest.json``."""
    elastic_root, out = Path(elastic_root), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ElasticError(f"Export folder {out} is not empty; choose a new folder so no stale file ends up in the build.")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ElasticError(f"Export dtype must be one of {sorted(dtypes)}, got {dtype!r}.")
    lm, space, record = load_elastic(elastic_root)
    result = route(lm, space, budget, data, uniform=True, table=measure_latency(lm, space) if budget.kind == "latency_ms" else None)
    small = extract_subnetwork(lm, space, result.plan)
    figures = _measure(lm, small, data, heldout, latency_seq_len)
    from transformers import AutoTokenizer

    src_llm = llm_folder(elastic_root)
    tokenizer = AutoTokenizer.from_pretrained(src_llm)
    out.mkdir(parents=True, exist_ok=True)
    out_llm = out / "llm" if src_llm != elastic_root else out
    if src_llm != elastic_root:
        shutil.copytree(elastic_root, out, ignore=shutil.ignore_patterns(*_NOT_COPIED), dirs_exist_ok=True)
    _save_lm(small.to(dtypes[dtype]), tokenizer, src_llm, out_llm, skip=(FLEXTRON_FILENAME,))
    sub = {"budget": str(budget), "route": result.to_dict(), "figures": figures, "dtype": dtype, "source": str(elastic_root),
           "space": space.to_dict(), "elastic_training": {k: record.get(k) for k in ("config", "status", "steps_done", "seconds")}}
    (out_llm / SUBNETWORK_FILENAME).write_text(json.dumps(sub, indent=2, default=str) + "\n")
    (out / "model_card.md").write_text(_card(sub, space))
    finish_model_folder(out)
    return out, result


def _save_lm(lm: nn.Module, tokenizer, src_llm: Path, out_llm: Path, skip: tuple[str, ...] = ()) -> None:
    out_llm.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out_llm)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_llm)
    for item in src_llm.iterdir():  # chat template, generation config …
        if item.is_file() and item.suffix != ".safetensors" and item.name not in skip and not (out_llm / item.name).exists():
            shutil.copy2(item, out_llm / item.name)


@torch.inference_mode()
def _measure(full: nn.Module, small: nn.Module, data: CalibData, heldout: CalibData | None, seq_len: int) -> dict:
    """Parameters, losses (nats / token) and median forward milliseconds of the full and the exported LM, measured here."""
    ids = torch.zeros(1, seq_len, dtype=torch.long)

    def ms(model):
        model(input_ids=ids, use_cache=False)
        times = []
        for _ in range(7):
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append((time.perf_counter() - t) * 1000)
        return sorted(times)[len(times) // 2]

    figures = {"params_full": sum(p.numel() for p in full.parameters()), "params": sum(p.numel() for p in small.parameters()),
               "calibration_loss_full": mean_loss(full, data), "calibration_loss": mean_loss(small, data),
               "forward_ms_full": ms(full), "forward_ms": ms(small), "forward_tokens": seq_len, "threads": torch.get_num_threads()}
    if heldout is not None:
        figures.update(heldout_loss_full=mean_loss(full, heldout), heldout_loss=mean_loss(small, heldout))
    return figures


def _card(sub: dict, space: ElasticSpace) -> str:
    f, plan = sub["figures"], sub["route"]["plan"][0]
    rows = [("parameters (LM)", f"{f['params_full']:,}", f"{f['params']:,}"),
            ("query heads / KV heads per layer", f"{space.num_heads} / {space.num_kv_heads}",
             f"{plan['heads']} / {plan['heads'] // space.heads_per_group}"),
            ("MLP neurons per layer", f"{space.intermediate}", f"{plan['mlp']}"),
            ("calibration loss (nats / token)", f"{f['calibration_loss_full']:.4f}", f"{f['calibration_loss']:.4f}")]
    if "heldout_loss" in f:
        rows.append(("held-out loss (nats / token)", f"{f['heldout_loss_full']:.4f}", f"{f['heldout_loss']:.4f}"))
    rows.append((f"forward of {f['forward_tokens']} tokens, CPU, {f['threads']} threads (ms, median of 7)",
                 f"{f['forward_ms_full']:.2f}", f"{f['forward_ms']:.2f}"))
    lines = ["# m3 elastic sub-network (Flextron)", "",
             (f"One width of the elastic model `{sub['source']}`, chosen by the static router for the budget `{sub['budget']}` "
              "and written as a plain model folder (the ordinary loader reads it). Figures measured by the export on this machine."), "",
             "| | full elastic model | this sub-network |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows), "",
             f"Weights stored as {sub['dtype']}. Elastic training: {json.dumps(sub['elastic_training'].get('config') or {})}.", ""]
    return "\n".join(lines)

