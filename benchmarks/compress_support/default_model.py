"""The 2:4 sparsity comparison on a shipped VLM (the embedded default model unless told otherwise).

The LM of a VILA-layout model folder is pruned by each method on chat-format training conversations of
its own phantom data (rendered with its chat template, system prompt and expert tools, as the agent
sees them); each result is written back as a full model folder and scored twice: perplexity on the
held-out conversations, and the ``m3 eval`` harness (closed-question accuracy, expert-call precision /
recall, grounded answers, report finding F1) on the held-out phantom cases.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path

import torch

from vlm.compress.calibration import calibration_size, iterate_batches, mean_loss, vlm_batches
from vlm.compress.depth import load_pruned_lm, save_pruned_lm
from vlm.compress.maskllm import MaskLLMConfig, train_maskllm
from vlm.compress.oneshot import METHODS, OneShotConfig, prune_oneshot
from vlm.compress.targets import apply_masks, sparsity_of
from vlm.eval.harness import evaluate_model

STAGE_FILES = ("align", "ift", "medical-ift")


def run(model_dir: Path, data_dir: Path, work: Path, *, calib_per_file: int, heldout_per_file: int, eval_limit: int,
        maskllm_steps: int, maskllm_lr: float, progress: bool = False) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "llm")
    lm = load_pruned_lm(model_dir / "llm", dtype=torch.float32).eval()
    calib = vlm_batches(model_dir, [data_dir / f"{s}_train.json" for s in STAGE_FILES], per_file=calib_per_file)
    heldout = vlm_batches(model_dir, [data_dir / f"{s}_test.json" for s in STAGE_FILES], per_file=heldout_per_file)
    work.mkdir(parents=True, exist_ok=True)

    def score(name: str, model, extra: dict) -> dict:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("llm", "manifest.json"))
        save_pruned_lm(model.to(torch.float16), folder / "llm", tokenizer)
        for item in (model_dir / "llm").iterdir():  # chat template, generation config
            if item.is_file() and not (folder / "llm" / item.name).exists() and item.suffix != ".safetensors":
                shutil.copy2(item, folder / "llm" / item.name)
        model.to(torch.float32)
        report = evaluate_model(folder, data_dir, work / f"{name}-eval", experts="truth", limit=eval_limit, progress=progress)
        h = report["headline"]
        return {"ppl": math.exp(mean_loss(model, heldout)), **{k: h.get(k) for k in HEADLINE}, **extra}

    t0 = time.time()
    rows = {"dense": score("dense", copy.deepcopy(lm), {})}
    masks = {}
    for method in METHODS:
        model = copy.deepcopy(lm)
        t = time.time()
        masks[method] = prune_oneshot(model, calib, OneShotConfig(method=method))
        rows[method] = score(method, model, {"seconds": round(time.time() - t, 1), "sparsity": round(sparsity_of(model), 4)})
    model = copy.deepcopy(lm)
    t = time.time()
    config = MaskLLMConfig(steps=maskllm_steps, lr=maskllm_lr, batch_size=8)
    result = train_maskllm(model, iterate_batches(calib, config.batch_size, seed=1), config, prior=masks["sparsegpt"])
    apply_masks(model, result.masks)
    rows["maskllm"] = score("maskllm", model, {"seconds": round(time.time() - t, 1), "sparsity": round(sparsity_of(model), 4),
                                               "prior": "sparsegpt", "changed_from_prior": round(result.changed_from_prior, 4)})
    params = sum(p.numel() for p in lm.parameters())
    return {"model": str(model_dir), "data": str(data_dir), "params": params, "layers": lm.config.num_hidden_layers,
            "hidden": lm.config.hidden_size, "calib_conversations": calibration_size(calib), "heldout_conversations": calibration_size(heldout),
            "eval_limit": eval_limit, "maskllm_steps": maskllm_steps, "rows": rows,
            "delta_ppl": {k: v["ppl"] - rows["dense"]["ppl"] for k, v in rows.items()}, "seconds": round(time.time() - t0, 1)}


HEADLINE = ("closed_accuracy", "call_precision", "call_recall", "grounded_answer_rate", "finding_f1")


def markdown(section: dict) -> list[str]:
    rows, dp = section["rows"], section["delta_ppl"]
    lines = [f"### 2:4 sparsity on the shipped model's LM ({section['params']:,} parameters, {section['layers']} layers × {section['hidden']})", "",
             f"Calibration: {section['calib_conversations']} training conversations (captions, VQA, expert conversations) as the LM sees "
             f"them in the VLM (chat template, tools, image features); perplexity of the assistant's turns on {section['heldout_conversations']} "
             f"held-out conversations; `m3 eval` (truth experts) on {section['eval_limit']} held-out items per part.", "",
             "| 2:4 method | perplexity | Δppl vs dense | closed acc. | call P | call R | grounded | finding F1 |", "|---|---|---|---|---|---|---|---|"]
    for name in ("dense", *METHODS, "maskllm"):
        r = rows[name]
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "–" for k in HEADLINE]
        lines.append(f"| {name} | {r['ppl']:.3f} | {dp[name]:+.3f} | " + " | ".join(cells) + " |")
    return lines
