"""Flextron benchmark: one elastic training run of a small Llama LM yields every width; the ~50 %-parameter width
is compared with the full model, with a model of that size trained from scratch on the same recipe and the same
step budget (the original training plus the elastic steps), and with depth pruning at no more parameters
(blocks of lowest angular importance removed, low-rank recovery, fine-tuned for the same elastic steps).

The LM is the report LM of the compression benchmark (``benchmarks/compress_support``: templated radiology
reports, closed yes/no questions scored by the likelihood of " yes" against " no"), trained and cached here.
Closed accuracy is that QA accuracy on held-out reports; loss is held-out next-token loss (nats / token).

    python benchmarks/flextron.py            # 4-layer LM (trains in minutes on 2 cores, cached in cache/compress_lm/)
    python benchmarks/flextron.py --quick    # 2-layer LM, < 1 minute

Ratios: ``half_closed_drop`` = closed accuracy of the original full model minus that of the elastic model's
~50 % width (target <= 0.03); ``half_vs_scratch`` = closed accuracy of the ~50 % width ÷ the from-scratch model of
the same size (target >= 1.0).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compress_support.reports import generate_reports, qa_items, training_texts  # noqa: E402
from benchmarks.compress_support.tiny_lm import TinyLMConfig, corpus_blocks, qa_accuracy, train_or_load  # noqa: E402
from vlm.compress.calibration import iterate_batches, mean_loss, pack_tokens  # noqa: E402
from vlm.compress.depth import DepthConfig, angular_importance, prune_depth  # noqa: E402
from vlm.compress.elastic import (Budget, DistillConfig, apply_ordering, count_params, extract_subnetwork, make_elastic,  # noqa: E402
                                  measure_latency, plan_applied, route, train_elastic)
from vlm.compress.mft import FinetuneConfig, finetune  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FULL = dict(lm=TinyLMConfig(intermediate=352), elastic_steps=80, elastic_lr=1e-3, qa_reports=300, heldout_reports=300, calib_reports=200)
QUICK = dict(lm=TinyLMConfig(layers=2, hidden=64, intermediate=192, heads=4, vocab=384, seq_len=48, train_reports=600, steps=150,
                             batch_size=16), elastic_steps=30, elastic_lr=2e-3, qa_reports=80, heldout_reports=80, calib_reports=60)
HALF = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-layer LM, fewer steps (< 1 minute)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids stalls on a shared CPU)")
    parser.add_argument("--elastic-steps", type=int, help="elastic distillation steps (default: the plan's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = dict(QUICK if args.quick else FULL)
    if args.elastic_steps:
        plan["elastic_steps"] = args.elastic_steps
    result = run(plan, quick=args.quick)
    table = _markdown(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "flextron_quick" if args.quick else "flextron"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    r = result["ratios"]
    print(f"half_closed_drop = {r['half_closed_drop']['value']:.3f} (target <= 0.03); "
          f"half_vs_scratch = {r['half_vs_scratch']['value']:.3f} (target >= 1.0)")
    return 0


def run(plan: dict, quick: bool) -> dict:
    start = time.time()
    cfg: TinyLMConfig = plan["lm"]
    lm, tok, info = train_or_load(cfg, progress=False)
    lm.eval()
    train_ids = pack_tokens(tok, training_texts(generate_reports(cfg.train_reports, "A", cfg.seed + 1), cfg.seed), cfg.seq_len)
    calib = corpus_blocks(tok, "A", plan["calib_reports"], 11, cfg.seq_len)
    heldout = corpus_blocks(tok, "A", plan["heldout_reports"], 12, cfg.seq_len)
    qa = qa_items(generate_reports(plan["qa_reports"], "A", 13), 13)

    def score(model, extra: dict | None = None) -> dict:
        return {"closed": qa_accuracy(model, tok, qa), "loss": mean_loss(model, heldout), **(extra or {})}

    original = score(lm, {"params": sum(p.numel() for p in lm.parameters())})
    steps = plan["elastic_steps"]
    elastic = copy.deepcopy(lm)
    t = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        trained = train_elastic(elastic, train_ids, run_dir, DistillConfig(steps=steps, lr=plan["elastic_lr"], batch_size=cfg.batch_size,
                                                                          checkpoint_every=10**9), progress=False)
    elastic_seconds = time.time() - t
    elastic.eval()
    space = trained.space
    widths = []
    for h in space.head_levels:
        for m in space.mlp_levels:
            p = space.uniform(h, m)
            with plan_applied(elastic, p, space):
                widths.append(score(elastic, {"heads": h, "mlp": m, "params": count_params(elastic, p, space)}))
    full = score(elastic, {"params": count_params(elastic, None, space)})
    half_route = route(elastic, space, Budget("params", HALF), calib[:64], uniform=True)
    with plan_applied(elastic, half_route.plan, space):
        half = score(elastic, {"params": half_route.params, "plan": [vars(w) for w in half_route.plan[:1]]})
    per_layer_route = route(elastic, space, Budget("params", HALF), calib[:64])
    with plan_applied(elastic, per_layer_route.plan, space):
        half_per_layer = score(elastic, {"params": per_layer_route.params, "plan": [vars(w) for w in per_layer_route.plan],
                                         "uniform_won": per_layer_route.uniform})
    # the same width cut from the original LM in importance order, without elastic training: what the training buys
    untrained = copy.deepcopy(lm)
    apply_ordering(untrained, trained.ordering)
    make_elastic(untrained)
    with plan_applied(untrained, half_route.plan, space):
        half_untrained = score(untrained)
    small = extract_subnetwork(elastic, space, half_route.plan)
    scratch_steps = cfg.steps + steps
    scratch, scratch_seconds = _train_scratch(small.config, train_ids, cfg, scratch_steps)
    scratch_row = score(scratch, {"params": sum(p.numel() for p in scratch.parameters()), "steps": scratch_steps,
                                  "seconds": round(scratch_seconds, 1)})
    depth = _depth(lm, calib, train_ids, cfg, half_route.params, steps, plan["elastic_lr"], score)
    latency = measure_latency(elastic, space, seq_len=cfg.seq_len, repeats=5)
    drop = original["closed"] - half["closed"]  # against the original model: elastic training may cost the full width too
    vs_scratch = half["closed"] / max(scratch_row["closed"], 1e-9)
    return {
        "benchmark": "flextron",
        "ratios": {
            "half_closed_drop": {"value": round(drop, 4), "target": 0.03, "better": "lower"},
            "half_vs_scratch": {"value": round(vs_scratch, 4), "target": 1.0, "better": "higher"},
        },
        "details": {
            "quick": quick, "lm": info, "elastic_steps": steps, "elastic_steps_fraction_of_training": round(steps / cfg.steps, 3),
            "elastic_seconds": round(elastic_seconds, 1), "qa_items": len(qa), "heldout_blocks": int(heldout.shape[0]),
            "original": original, "elastic_full": full, "half_uniform": half, "half_per_layer": half_per_layer,
            "half_without_elastic_training": half_untrained, "scratch": scratch_row, "depth": depth, "widths": widths,
            "latency_ms": {"seq_len": latency.seq_len, "full": latency.predict(space.full()), "half": latency.predict(half_route.plan),
                           "smallest": latency.predict(space.smallest()), "threads": latency.threads},
            "history_first_last": [trained.history[0], trained.history[-1]], "seconds": round(time.time() - start, 1),
            "data": "templated radiology reports (benchmarks/compress_support/reports.py); closed = yes/no QA accuracy",
        },
    }


def _train_scratch(config, ids: torch.Tensor, cfg: TinyLMConfig, steps: int):
    """A freshly initialised LM of ``config`` trained with the report LM's recipe (AdamW, one-cycle lr) for ``steps``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps, pct_start=0.05)
    batches = iterate_batches(ids, cfg.batch_size, cfg.seed)
    t = time.time()
    model.train()
    for _ in range(steps):
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval(), time.time() - t


def _depth(lm, calib, train_ids, cfg: TinyLMConfig, params_limit: int, steps: int, lr: float, score) -> dict:
    """Remove the blocks of lowest angular importance until the LM has no more than ``params_limit`` parameters
    (low-rank recovery), then fine-tune it for the elastic run's steps."""
    angular = angular_importance(lm, calib[:64])
    order = sorted(range(len(angular["block"])), key=angular["block"].__getitem__)
    for k in range(1, len(order)):
        model = copy.deepcopy(lm)
        prune_depth(model, DepthConfig(blocks=sorted(order[:k]), recovery="lowrank", rank=8), calib[:64])
        params = sum(p.numel() for p in model.parameters())
        if params <= params_limit or k == len(order) - 1:
            break
    pruned = score(model, {"blocks_removed": sorted(order[:k]), "params": params})
    finetune(model, iterate_batches(train_ids, cfg.batch_size, seed=3), FinetuneConfig(method="standard", steps=steps, lr=lr), progress=False)
    model.eval()
    return {"pruned": pruned, "pruned_finetuned": score(model, {"params": params, "steps": steps})}


def _markdown(result: dict) -> str:
    d, r = result["details"], result["ratios"]
    lines = ["## Flextron elastic widths (benchmarks/flextron.py" + (" --quick" if d["quick"] else "") + ")", "",
             (f"Report LM: {d['lm']['config']['layers']} layers, hidden {d['lm']['config']['hidden']}, {d['lm']['params']:,} parameters, "
             f"trained {d['lm']['config']['steps']} steps; elastic distillation {d['elastic_steps']} steps "
             f"({d['elastic_steps_fraction_of_training']:.0%} of its training steps, {d['elastic_seconds']} s). "
             f"Closed = yes/no QA accuracy on {d['qa_items']} held-out items; loss on held-out reports (nats / token)."), "",
             "| model | parameters | closed | loss |", "|---|---|---|---|"]

    def row(name, x):
        lines.append(f"| {name} | {x['params']:,} | {x['closed']:.3f} | {x['loss']:.3f} |")

    row("original LM", d["original"])
    row("elastic, full width", d["elastic_full"])
    row(f"elastic, ~50 % uniform ({d['half_uniform']['plan'][0]['heads']} heads, {d['half_uniform']['plan'][0]['mlp']} MLP)", d["half_uniform"])
    row("elastic, ~50 % per-layer route", d["half_per_layer"])
    row("same width cut without elastic training", {**d["half_without_elastic_training"], "params": d["half_uniform"]["params"]})
    row(f"from scratch, same size, {d['scratch']['steps']} steps", d["scratch"])
    row(f"depth pruning (blocks {d['depth']['pruned']['blocks_removed']} removed, low-rank recovery)", d["depth"]["pruned"])
    row(f"depth pruning + {d['elastic_steps']} fine-tuning steps", d["depth"]["pruned_finetuned"])
    lat = d["latency_ms"]
    lines += ["", (f"Predicted forward latency ({lat['seq_len']} tokens, {lat['threads']} thread(s), from the measured per-layer table): "
              f"full {lat['full']:.2f} ms, ~50 % {lat['half']:.2f} ms, smallest {lat['smallest']:.2f} ms."), "",
              "| ratio | value | target |", "|---|---|---|"]
    for k, v in r.items():
        mark = "met" if (v["value"] <= v["target"] if v["better"] == "lower" else v["value"] >= v["target"]) else "not met"
        lines.append(f"| {k} | {v['value']:.3f} | {'<=' if v['better'] == 'lower' else '>='} {v['target']} ({mark}) |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
