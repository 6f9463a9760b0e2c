"""``m3 compress maskllm|oneshot|mft|depth`` and ``m3 export``: thin argparse layers over vlm.compress / vlm.export.

Every compress command reads a model folder (VILA layout with ``llm/``, or a bare Hugging Face causal
LM folder) and text samples (``--data``: .txt lines, .jsonl or .json records), and writes a new model
folder of the same layout, with the options in ``compress.json`` next to the LM, its files readable by all and a
fresh ``manifest.json`` (``vlm.compress.build_files``), so ``m3 serve`` accepts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from vlm.compress.build_files import finish_model_folder
from vlm.compress.calibration import calibration_size, iterate_batches, load_texts, mean_loss, pack_tokens, vlm_batches
from vlm.compress.depth import DepthConfig, angular_importance, load_pruned_lm, prune_depth, save_pruned_lm
from vlm.compress.elastic.distill import DistillConfig
from vlm.compress.errors import CompressError
from vlm.compress.maskllm import MaskLLMConfig, train_maskllm
from vlm.compress.masks_io import MASKS_FILENAME, load_masks, save_masks
from vlm.compress.mft import FinetuneConfig, finetune
from vlm.compress.oneshot import METHODS, OneShotConfig, prune_oneshot
from vlm.compress.targets import apply_masks

__all__ = ["add_parsers"]

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``compress`` (with maskllm, oneshot, mft, depth, flextron, flextron-export) and ``export`` on the ``m3`` parser."""
    compress = sub.add_parser("compress", help="make the model smaller or adapt it to a site")
    methods = compress.add_subparsers(dest="compress_method", metavar="METHOD", required=True)

    p = _common(methods.add_parser("maskllm", help="learn 2:4 masks end to end (MaskLLM)"))
    p.add_argument("--steps", type=int, default=MaskLLMConfig.steps, help="mask-learning steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=MaskLLMConfig.lr, help="AdamW learning rate of the mask logits (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=MaskLLMConfig.batch_size, help="token blocks per step (default: %(default)s)")
    p.add_argument("--reg-lambda", type=float, default=MaskLLMConfig.reg_lambda,
                   help="weight of the reward for masks that keep large weights, decayed to 0 over the steps (default: %(default)s)")
    p.add_argument("--prior", choices=[*METHODS, "none"], default="sparsegpt",
                   help="one-shot mask used as the prior; none: learn from scratch (default: %(default)s)")
    p.add_argument("--prior-masks", help="a saved mask file used as the prior instead (mask transfer) (default: none, --prior)")
    p.set_defaults(func=_cmd_maskllm)

    p = _common(methods.add_parser("oneshot", help="one-shot 2:4 pruning: magnitude, Wanda or SparseGPT"))
    p.add_argument("--method", choices=METHODS, default="sparsegpt",
                   help="how the two weights of each four are chosen (default: %(default)s)")
    p.add_argument("--damp", type=float, default=OneShotConfig.damp,
                   help="SparseGPT dampening, a fraction of the mean Hessian diagonal (default: %(default)s)")
    p.set_defaults(func=_cmd_oneshot)

    p = _common(methods.add_parser("mft", help="site adaptation by minifinetuning (or standard fine-tuning)"))
    p.add_argument("--method", choices=["mft", "standard"], default="mft",
                   help="mft: minifinetuning against the model before tuning (keeps what it knew); standard: cross-entropy "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=FinetuneConfig.steps, help="fine-tuning steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr, help="AdamW learning rate, constant (default: %(default)s)")
    p.add_argument("--tau", type=float, default=FinetuneConfig.tau,
                   help="MFT: how far the target moves from the original model towards the label, 0-1 (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=FinetuneConfig.temperature,
                   help="MFT: softmax temperature of the original model and the tuned one (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="token blocks per step (default: %(default)s)")
    p.set_defaults(func=_cmd_mft)

    p = _common(methods.add_parser("depth", help="remove blocks or attention sublayers, with optional recovery"))
    p.add_argument("--blocks", type=_int_list, default=[], help="block indices to remove, e.g. 2,3 (default: none)")
    p.add_argument("--attention", type=_int_list, default=[], help="attention sublayers to remove, e.g. 1,3 (default: none)")
    p.add_argument("--auto-blocks", type=int, default=0, help="remove the N blocks of lowest angular importance (default: %(default)s)")
    p.add_argument("--auto-attention", type=int, default=0,
                   help="remove the N attention sublayers of lowest angular importance (default: %(default)s)")
    p.add_argument("--recovery", choices=["none", "bias", "lowrank"], default="lowrank",
                   help="what stands in for a removed part, fitted by least squares on the calibration data (default: %(default)s)")
    p.add_argument("--rank", type=int, default=DepthConfig.rank, help="rank of the lowrank recovery (default: %(default)s)")
    p.set_defaults(func=_cmd_depth)

    p = _common(methods.add_parser("flextron", help="elastic widths (Flextron): one model that deploys at many sizes"))
    p.add_argument("--steps", type=int, default=DistillConfig.steps, help="distillation steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=DistillConfig.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=DistillConfig.batch_size, help="token blocks per step (default: %(default)s)")
    p.add_argument("--kd-weight", type=float, default=DistillConfig.kd_weight,
                   help="weight of KL(full model ‖ sub-network) (default: %(default)s)")
    p.add_argument("--task-weight", type=float, default=DistillConfig.task_weight,
                   help="weight of the task cross-entropy (default: %(default)s)")
    p.add_argument("--random-subnets", type=int, default=DistillConfig.random_subnets,
                   help="random-width sub-networks per step, besides the full and the smallest (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=DistillConfig.checkpoint_every,
                   help="steps between checkpoints in --out (for --resume) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DistillConfig.seed, help="seed of the batches and sub-network draws (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its last checkpoint")
    p.set_defaults(func=_cmd_flextron)

    p = methods.add_parser("flextron-export", help="write one width of an elastic model as a plain model folder for a budget")
    p.add_argument("--model", required=True, help="elastic model folder (from m3 compress flextron)")
    p.add_argument("--data", required=True, help="calibration conversations the router scores widths on (as for flextron)")
    p.add_argument("--out", required=True, help="new, empty model folder")
    p.add_argument("--budget", required=True, help="params=0.5 (fraction of the LM, or a count), memory_mb=M or latency_ms=T")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16",
                   help="precision of the written weights (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration block (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=200, help="most calibration samples read from --data (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0: torch's own choice (default: %(default)s)")
    p.set_defaults(func=_cmd_flextron_export)

    p = sub.add_parser("export", help="write an on-prem build folder (weights, masks, model card, manifest)")
    p.add_argument("--model", required=True, help="VILA-layout model folder")
    p.add_argument("--out", required=True, help="new, empty build folder")
    p.add_argument("--masks", help="2:4 mask file to apply (from m3 compress maskllm|oneshot) (default: none, dense)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="bfloat16",
                   help="precision of the written weights (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="int8 weight-only LM weights (needs torchao: pip install 'm3[gpu]')")
    p.add_argument("--model-card", help="Markdown to include in the card, labelled as measured elsewhere, e.g. benchmarks/results/compress.md (default: none)")
    p.add_argument("--experts", help="folder of expert bundles to ship (default: none, the app's configured experts serve it)")
    p.add_argument("--no-measure", action="store_true", help="skip the peak-memory measurement")
    p.set_defaults(func=_cmd_export)


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True, help="model folder (VILA layout with llm/, or a causal LM folder)")
    p.add_argument("--data", required=True, help="text samples: .txt (one per line), .jsonl or .json; for a VLM folder, a LLaVA JSON with pictures (e.g. medical-ift_train.json) calibrates on what the LM sees in the VLM")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration / training block (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=2000, help="most samples read from --data (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0: torch's own choice (default: %(default)s)")
    return p


def _load(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    root = Path(args.model)
    llm_dir = root / "llm" if (root / "llm" / "config.json").is_file() else root
    if not (llm_dir / "config.json").is_file():
        raise CompressError(f"{root} holds neither llm/config.json nor config.json; point --model at a model folder.")
    lm = load_pruned_lm(llm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    if llm_dir != root and _has_pictures(Path(args.data)):  # a VLM and its conversations: calibrate as the LM sees them
        return root, llm_dir, lm, tokenizer, vlm_batches(root, [args.data], per_file=args.max_samples)
    system_prompt, tools = _agent_context(root)
    texts = load_texts(args.data, tokenizer, system_prompt=system_prompt, tools=tools)
    ids = pack_tokens(tokenizer, texts[: args.max_samples], args.seq_len)
    return root, llm_dir, lm, tokenizer, ids


def _has_pictures(path: Path) -> bool:
    """Whether ``path`` is a LLaVA JSON list of conversations with pictures."""
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(records, list) and bool(records) and isinstance(records[0], dict) and \
        "conversations" in records[0] and bool(records[0].get("image") or records[0].get("images"))


def _agent_context(root: Path) -> tuple[str | None, list[dict] | None]:
    """The system prompt and the expert tools the agent serves the model in ``root`` with (``vlm.agent_context``, from
    a VILA-layout ``config.json``), so chat-format calibration data reads as it does in the agent."""
    from vlm.agent_context import agent_context

    cfg = root / "config.json"
    config = json.loads(cfg.read_text()) if cfg.is_file() and (root / "llm").is_dir() else None
    context = agent_context(config)
    return context.system_prompt, context.tools


def _save(args, root: Path, llm_dir: Path, lm, tokenizer, record: dict) -> Path:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CompressError(f"Output folder {out} is not empty; choose a new folder.")
    out_llm = out
    if llm_dir != root:  # VILA layout: everything but the LM is copied unchanged
        shutil.copytree(root, out, ignore=shutil.ignore_patterns("llm"), dirs_exist_ok=True)
        out_llm = out / "llm"
    save_pruned_lm(lm, out_llm, tokenizer)
    for item in llm_dir.iterdir():
        if item.is_file() and not (out_llm / item.name).exists() and item.suffix != ".safetensors" and item.name != MASKS_FILENAME:
            shutil.copy2(item, out_llm / item.name)
    (out_llm / "compress.json").write_text(json.dumps(record, indent=2, default=str))
    return out_llm


def _cmd_maskllm(args) -> int:
    root, llm_dir, lm, tok, ids = _load(args)
    config = MaskLLMConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, reg_lambda=args.reg_lambda)
    rows = calibration_size(ids)
    passes = config.steps * (ids[0]["labels"].shape[0] if isinstance(ids, list) else config.batch_size) / max(rows, 1)
    if passes > 1.5:
        log.warning("MaskLLM will see each of the %d calibration samples %.1f times; masks learnt on a small set over-fit it "
                    "(lower held-out quality than the one-shot prior was measured here). Give more samples, fewer --steps or "
                    "a lower --lr (2e-4 worked for one pass over a few thousand conversations).", rows, passes)
    if args.prior_masks:
        prior = load_masks(args.prior_masks)
    elif args.prior != "none":
        prior = prune_oneshot(lm, ids, OneShotConfig(method=args.prior), inplace=False)
    else:
        prior = None
    before = mean_loss(lm, ids)
    result = train_maskllm(lm, iterate_batches(ids, config.batch_size), config, prior=prior)
    apply_masks(lm, result.masks)
    record = {"method": "maskllm", "config": asdict(config), "prior": args.prior_masks or args.prior, "loss_dense": before,
              "loss_masked": mean_loss(lm, ids), "changed_from_prior": result.changed_from_prior, "losses": result.losses}
    out_llm = _save(args, root, llm_dir, lm, tok, record)
    path = save_masks(result.masks, out_llm / MASKS_FILENAME, method="maskllm")
    finish_model_folder(args.out)
    print(f"masks: {path}  calibration loss dense {before:.4f} → 2:4 {record['loss_masked']:.4f} nats/token")
    return 0


def _cmd_oneshot(args) -> int:
    root, llm_dir, lm, tok, ids = _load(args)
    config = OneShotConfig(method=args.method, damp=args.damp)
    before = mean_loss(lm, ids)
    masks = prune_oneshot(lm, ids, config)
    record = {"method": args.method, "config": asdict(config), "loss_dense": before, "loss_masked": mean_loss(lm, ids)}
    out_llm = _save(args, root, llm_dir, lm, tok, record)
    path = save_masks(masks, out_llm / MASKS_FILENAME, method=args.method)
    finish_model_folder(args.out)
    print(f"masks: {path}  calibration loss dense {before:.4f} → 2:4 {record['loss_masked']:.4f} nats/token")
    return 0


def _cmd_mft(args) -> int:
    root, llm_dir, lm, tok, ids = _load(args)
    config = FinetuneConfig(method=args.method, steps=args.steps, lr=args.lr, tau=args.tau, temperature=args.temperature)
    before = mean_loss(lm, ids)
    result = finetune(lm, iterate_batches(ids, args.batch_size), config)
    record = {"method": args.method, "config": asdict(config), "site_loss_before": before, "site_loss_after": mean_loss(lm, ids),
              "losses": result.losses}
    out_llm = _save(args, root, llm_dir, lm, tok, record)
    finish_model_folder(args.out)
    print(f"{args.method}: site loss {before:.4f} → {record['site_loss_after']:.4f} nats/token; saved {out_llm}")
    return 0


def _cmd_depth(args) -> int:
    root, llm_dir, lm, tok, ids = _load(args)
    importance = angular_importance(lm, ids[:64])
    blocks, attention = list(args.blocks), list(args.attention)
    blocks += [i for i in sorted(range(len(importance["block"])), key=importance["block"].__getitem__) if i not in blocks][: args.auto_blocks]
    free = [i for i in sorted(range(len(importance["attention"])), key=importance["attention"].__getitem__) if i not in blocks + attention]
    attention += free[: args.auto_attention]
    if not blocks and not attention:
        raise CompressError("Nothing to remove: pass --blocks / --attention indices or --auto-blocks / --auto-attention N.")
    config = DepthConfig(blocks=sorted(blocks), attention=sorted(attention), recovery=args.recovery, rank=args.rank)
    before = mean_loss(lm, ids)
    prune_depth(lm, config, ids[:64])
    record = {"method": "depth", "config": asdict(config), "importance": importance, "loss_before": before, "loss_after": mean_loss(lm, ids)}
    out_llm = _save(args, root, llm_dir, lm, tok, record)
    finish_model_folder(args.out)
    print(f"depth: removed blocks {config.blocks}, attention {config.attention} ({args.recovery}); "
          f"loss {before:.4f} → {record['loss_after']:.4f} nats/token; saved {out_llm}")
    return 0


def _cmd_flextron(args) -> int:
    from vlm.compress.elastic.run import run_flextron

    config = DistillConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, kd_weight=args.kd_weight, task_weight=args.task_weight,
                           random_subnets=args.random_subnets, checkpoint_every=args.checkpoint_every, seed=args.seed)
    root, _llm_dir, lm, tok, ids = _load(args)
    record = run_flextron(root, lm, tok, ids, args.out, config, resume=args.resume)
    print(f"flextron: {record['status']}; elastic model in {args.out}")
    for row in record.get("widths", []):
        print(f"  heads {row['heads']:>3}  mlp {row['mlp']:>6}  params {row['params']:>12,}  loss {row['loss']:.4f} nats/token")
    return 0


def _cmd_flextron_export(args) -> int:
    from vlm.compress.elastic.deploy import export_subnetwork
    from vlm.compress.elastic.router import parse_budget

    budget = parse_budget(args.budget)
    _root, _llm_dir, _lm, _tok, ids = _load(args)
    out, result = export_subnetwork(args.model, args.out, budget, ids, dtype=args.dtype)
    w = result.plan[0]
    print(f"sub-network for {budget}: {w.heads} heads, {w.mlp} MLP neurons per layer, {result.params:,} LM parameters, "
          f"calibration loss {result.loss:.4f} nats/token; written to {out} (card: {out / 'model_card.md'})")
    return 0


def _cmd_export(args) -> int:
    from vlm.export import ExportConfig, export_build

    config = ExportConfig(masks=args.masks, dtype=args.dtype, int8=args.int8, model_card=args.model_card,
                          experts_dir=args.experts, measure_memory=not args.no_measure)
    out = export_build(args.model, args.out, config)
    print(f"build written to {out} (manifest: {out / 'manifest.json'})")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 2,3, got {text!r}") from exc
