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
        folder = _save_variant(model_dir, model, tokenizer, work / name)
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


def _save_variant(model_dir: Path, lm, tokenizer, folder: Path) -> Path:
    """``model_dir`` with its LM replaced by ``lm`` (float16 on disk, left float32 in memory)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("llm", "manifest.json"))
    save_pruned_lm(lm.to(torch.float16), folder / "llm", tokenizer)
    for item in (model_dir / "llm").iterdir():  # chat template, generation config
        if item.is_file() and not (folder / "llm" / item.name).exists() and item.suffix != ".safetensors":
            shutil.copy2(item, folder / "llm" / item.name)
    lm.to(torch.float32)
    return folder


# A new "site": the same anatomy imaged noisier and with other spacing (CT: 35 HU noise, 3 mm pixels and
# 5 mm slices; radiographs: more detector noise, 1.8 mm pixels so a wider field).
SITE_OPTIONS = {"ct": {"noise_hu": 35.0, "spacing": (3.0, 3.0, 5.0), "shape": (128, 128, 48)},
                "cxr": {"noise": 0.06, "pixel_spacing_mm": 1.8}}


def site_adaptation(model_dir: Path, data_dir: Path, site_dir: Path, work: Path, *, train_cases: int = 100, test_cases: int = 25,
                    steps: int = 120, lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3), headline_lr: float = 3e-4,
                    eval_limit: int = 24, per_file: int = 100, progress: bool = False) -> dict:
    """Standard fine-tuning against MFT of the shipped model's LM on a few hundred conversations of a new
    site (``SITE_OPTIONS``), at each learning rate in ``lrs``: loss gained on the site's held-out
    conversations over loss lost on the original held-out ones, and ``m3 eval`` on both for ``headline_lr``."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from vlm.compress.mft import FinetuneConfig, finetune
    from vlm.train.build import build_data
    from vlm.train.recipes import DataSpec, Recipe

    t0 = time.time()
    spec = DataSpec(train_cases={"ct": train_cases, "cxr": train_cases}, test_cases={"ct": test_cases, "cxr": test_cases},
                    questions_per_case=3, seed=3, phantom_options={k: dict(v) for k, v in SITE_OPTIONS.items()})
    build_data(replace(Recipe(), data=spec), site_dir, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "llm")
    lm = load_pruned_lm(model_dir / "llm", dtype=torch.float32).eval()
    site_train = vlm_batches(model_dir, [site_dir / f"{s}_train.json" for s in STAGE_FILES], per_file=per_file)
    site_test = vlm_batches(model_dir, [site_dir / f"{s}_test.json" for s in STAGE_FILES], per_file=per_file // 2)
    home_test = vlm_batches(model_dir, [data_dir / f"{s}_test.json" for s in STAGE_FILES], per_file=per_file // 2)

    def evaluate(name: str, model) -> dict:
        folder = _save_variant(model_dir, model, tokenizer, work / name)
        out = {}
        for where, d in (("site", site_dir), ("home", data_dir)):
            h = evaluate_model(folder, d, work / f"{name}-eval-{where}", experts="truth", limit=eval_limit, progress=progress)["headline"]
            out[where] = {k: h.get(k) for k in HEADLINE}
        return out

    before = {"loss_home": mean_loss(lm, home_test), "loss_site": mean_loss(lm, site_test), "eval": evaluate("site-before", lm)}
    runs = []
    for lr in lrs:
        row = {"lr": lr}
        for method in ("standard", "mft"):
            model = copy.deepcopy(lm)
            t = time.time()
            finetune(model, iterate_batches(site_train, 8, seed=2), FinetuneConfig(method=method, steps=steps, lr=lr), progress=progress)
            model.eval()
            gain = before["loss_site"] - mean_loss(model, site_test)  # nats / token gained on the new site
            lost = mean_loss(model, home_test) - before["loss_home"]  # nats / token lost on the original site
            row[method] = {"gain_site": gain, "loss_home": lost, "ratio": gain / max(lost, 1e-3), "seconds": round(time.time() - t, 1)}
            if lr == headline_lr:
                row[method]["eval"] = evaluate(f"site-{method}", model)
        row["mft_vs_standard"] = mft_vs_standard(row)
        runs.append(row)
    return {"site_options": SITE_OPTIONS, "site_data": str(site_dir), "site_train_conversations": calibration_size(site_train),
            "site_test_conversations": calibration_size(site_test), "home_test_conversations": calibration_size(home_test),
            "steps": steps, "batch_size": 8, "headline_lr": headline_lr, "eval_limit": eval_limit, "before": before, "runs": runs,
            "seconds": round(time.time() - t0, 1)}


def mft_vs_standard(row: dict) -> float | None:
    """MFT's gain-over-loss ratio ÷ standard fine-tuning's at one learning rate; None unless both gained on the site
    (a ratio of two negative ratios would read as a win)."""
    if min(row["standard"]["gain_site"], row["mft"]["gain_site"]) <= 0 or row["standard"]["ratio"] <= 0:
        return None
    return row["mft"]["ratio"] / row["standard"]["ratio"]


def site_markdown(section: dict) -> list[str]:
    o = section["site_options"]
    lines = ["### Site adaptation of the shipped model: MFT against standard fine-tuning", "",
             f"New site: CT noise {o['ct']['noise_hu']:g} HU, {o['ct']['spacing'][0]:g} mm pixels and {o['ct']['spacing'][2]:g} mm slices, radiographs with noise "
             f"{o['cxr']['noise']:g} and {o['cxr']['pixel_spacing_mm']:g} mm pixels. Fine-tuning: {section['site_train_conversations']} site "
             f"conversations, {section['steps']} steps of batch {section['batch_size']}, LM only. Gain = loss drop (nats/token) on "
             f"{section['site_test_conversations']} held-out site conversations; loss = rise on {section['home_test_conversations']} "
             "held-out original conversations; ratio = gain ÷ max(loss, 0.001).", "",
             "| lr | method | site gain | original loss | ratio | MFT ÷ standard |", "|---|---|---|---|---|---|"]
    for r in section["runs"]:
        for m in ("standard", "mft"):
            x = r[m]
            ratio = mft_vs_standard(r)
            lines.append(f"| {r['lr']:g} | {m} | {x['gain_site']:+.4f} | {x['loss_home']:+.4f} | {x['ratio']:.2f} | "
                         + ((f"{ratio:.2f} |" if ratio is not None else "n/a |") if m == "mft" else "|"))
    lines += ["", "A negative original loss means fine-tuning on the site also lowered the loss on the original conversations (the "
              "phantom site shares their wording, and the small model is not trained to convergence): the loss ratio then says "
              "little, and `m3 eval` shows what changed.", "",
              f"`m3 eval` (truth experts, {section['eval_limit']} items per part) at lr {section['headline_lr']:g}:", "",
              "| model | site closed acc. | site call R | site grounded | original closed acc. | original call R | original grounded |",
              "|---|---|---|---|---|---|---|"]
    rows = [("before", section["before"]["eval"])] + [(m, r[m]["eval"]) for r in section["runs"] for m in ("standard", "mft") if "eval" in r[m]]

    def f(v):
        return f"{v:.3f}" if isinstance(v, (int, float)) else "–"

    for name, e in rows:
        lines.append(f"| {name} | {f(e['site']['closed_accuracy'])} | {f(e['site']['call_recall'])} | {f(e['site']['grounded_answer_rate'])} | "
                     f"{f(e['home']['closed_accuracy'])} | {f(e['home']['call_recall'])} | {f(e['home']['grounded_answer_rate'])} |")
    return lines


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
