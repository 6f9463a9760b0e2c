"""Decoding constraints' cost: tokens/s of generation with every constraint on (``[[key]]`` references, the
call's side, the answer's side, the call's expert name and argument values) vs off, same prompts, on the shipped
default model and on a VILA-layout model with a 128,256-token Llama-3-sized tokenizer.

    python benchmarks/constraints.py [--quick]

(b) is built offline and cached under cache/benchmarks/constraints/: a byte-level BPE trained on the text
of the installed Python packages to 128,000 tokens plus 256 special tokens (Llama-3's count), and a random
4-layer, 256-wide Llama with that vocabulary in the published VILA layout (``config.json``, ``llm/``,
``vision_tower/``, ``mm_projector/``) loaded by ``vlm.model.load_model``. The first run trains the
tokenizer (about 1.5 minutes on 2 cores); later runs, ``--quick`` among them, reuse it.

Both runs follow one script: a logits bias pushes the script's next token (the same bias on and off), so
each model walks through the constraints' states (an answer with references, a tool call naming a
side, the other side named in the answer) whatever its weights; where a constraint bans the scripted
token the constrained run departs from it, as it would in use. A step's time is taken between
consecutive logits-processor calls; tokens/s is the steps of a run over their summed time, the median of
interleaved repeats. The first implementation (every vocabulary entry tested in Python on the whole
decoded text) is timed for a few steps on the 128k tokenizer in the same run.
Writes benchmarks/results/constraints.json and constraints.md. Ratios: ``constrained_vs_free_default``,
``constrained_vs_free_128k`` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import LogitsProcessor, LogitsProcessorList

import vlm.generate as vlm_generate
from data.tool_text import REF_CLOSE, REF_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.backends.base import GenerationConfig
from vlm.backends.hf_vlm import HFVLMBackend
from vlm.constraints import AskedFacts, DecodingConstraints, ReferenceConstraint, SideConstraint, token_index
from vlm.intent import parse_question
from vlm.model import load_model

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "cache" / "benchmarks" / "constraints"
DEFAULT_MODEL = ROOT / "vlm" / "weights" / "default"
VOCAB_128K, SPECIALS_128K = 128_256, 256
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

KEYS = ("left kidney volume", "left kidney", "right kidney volume", "right kidney", "liver volume", "liver", "liver tumor count",
        "liver tumor", "edema?", "edema volume", "hemisphere", "left hemisphere")
QUESTION = "What is the volume of the left kidney?"
ASKED = AskedFacts.of(parse_question(QUESTION, ("CT",)))  # parsed once, as the agent does
CONSTRAINED = {"references": KEYS, "call_side": "left", "answer_side": "left", "asked": ASKED, "answer_keys": ("left kidney volume",),
               "call_arguments": {"ct_segmentation": {"targets": ("left kidney",)}}}
SCRIPT = ('[[left kidney volume]]. The left kidney volume is [[left kidney volume]] and the liver volume is [[liver volume]]; '
          'liver tumors: [[liver tumor count]], the largest [[liver tumor]]. <tool_call>{"name": "ct_segmentation", '
          '"arguments": {"targets": "right kidney"}}</tool_call> The right kidney was not measured. The left hemisphere '
          'shows [[left hemisphere]]; edema [[edema?]] of [[edema volume]]. ' * 2)
TOOLS = [{"type": "function", "function": {"name": "ct_segmentation", "description": "CT segmentation of organs and lesions; volumes in mL.",
          "parameters": {"type": "object", "properties": {"targets": {"type": "string", "enum": ["left kidney", "right kidney", "liver"]}}}}}]


class ScriptBias(LogitsProcessor):
    """Adds a large bonus to the script's next token (by generated position), the same on and off."""

    def __init__(self, script_ids: list[int]) -> None:
        self.script = script_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1]
        if step < len(self.script) and self.script[step] < scores.shape[-1]:
            scores[:, self.script[step]] += 1e4
        return scores


class StepTimer(LogitsProcessor):
    """Records the time of every decoding step (the logits processors run once per step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


class Timed(LogitsProcessor):
    """Runs a processor and adds its time to ``spent`` (the constraints' own share of a step)."""

    def __init__(self, inner: LogitsProcessor, spent: list[float]) -> None:
        self.inner, self.spent = inner, spent

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.spent.append(time.perf_counter() - t0)
        return out


class PerVocabularyReference(ReferenceConstraint):
    """The first implementation, for comparison: the whole text decoded and every vocabulary entry tested in Python."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=True)
        if text.rfind(TOOL_CALL_OPEN) > text.rfind(TOOL_CALL_CLOSE):
            return scores
        at = text.rfind(REF_OPEN)
        banned = []
        if at >= 0 and text.find(REF_CLOSE, at) < 0:
            keys, partial = self.allowed(text[:at]), text[at + 2:]
            banned = [i for i in range(min(len(self.pieces), scores.shape[-1])) if not self.ok(partial + self.pieces[i], keys)] if keys else []
        else:
            for i in [i for i, t in enumerate(self.pieces) if "[" in t]:
                cand = text[-1:] + self.pieces[i]
                j = cand.find(REF_OPEN)
                if j >= 0 and j + 2 != len(cand):
                    keys = self.allowed(text + cand[1:j])
                    if keys and not self.ok(cand[j + 2:], keys):
                        banned.append(i)
        if banned and len(banned) < scores.shape[-1]:
            scores[0, torch.as_tensor(banned)] = -float("inf")
        return scores


class PerVocabularySide(SideConstraint):
    """The first implementation, for comparison (answer side only: the span is the whole text)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        span = self.tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=True)
        banned = [i for i in range(min(len(self.pieces), scores.shape[-1])) if self.spells_other(span + self.pieces[i])]
        if banned and len(banned) < scores.shape[-1]:
            scores[0, torch.as_tensor(banned)] = -float("inf")
        return scores


def tokenizer_128k() -> Path:
    """A 128,256-token tokenizer folder (cached): byte-level BPE on the installed packages' text + 256 specials."""
    out = CACHE / "tokenizer-128k"
    if (out / "tokenizer.json").is_file():
        return out
    from vlm.tokenizer import TokenizerConfig, train_tokenizer

    site = Path(torch.__file__).resolve().parents[1]
    files = [f for ext in ("md", "rst", "txt", "py") for f in sorted(glob.glob(str(site / "**" / f"*.{ext}"), recursive=True))]
    texts, size = [], 0
    for f in files:  # about 60 MB of documentation and source text
        texts.append(Path(f).read_text(errors="ignore"))
        size += len(texts[-1])
        if size > 60e6:
            break
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(SPECIALS_128K - len(LLAMA3_SPECIALS))]
    print(f"training the 128k tokenizer on {size / 1e6:.0f} MB of local text (once; cached in {out})", flush=True)
    tok = train_tokenizer(texts, None, TokenizerConfig(vocab_size=VOCAB_128K, min_frequency=2, special_tokens=LLAMA3_SPECIALS + reserved,
                                                       plain_added_tokens=[], bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                                       pad_token="<|end_of_text|>", chat_template=None))
    if len(tok) != VOCAB_128K:
        raise RuntimeError(f"the local text gave a {len(tok)}-token vocabulary, expected {VOCAB_128K}; give the tokenizer more text.")
    tok.save_pretrained(out)
    return out


def vila_model_128k() -> Path:
    """A VILA-layout folder (cached): random Llama 4x256 with the 128k vocabulary, SigLIP 2x32, mlp_downsample projector."""
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    root = CACHE / "Llama3-VILA-M3-128k-tiny"
    if (root / "config.json").is_file():
        return root
    tok = AutoTokenizer.from_pretrained(tokenizer_128k())
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                                       num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    llm.to(torch.bfloat16).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 image_size=70, patch_size=14))
    tower.save_pretrained(root / "vision_tower")
    weights = root / "vision_tower" / "model.safetensors"  # published key names: vision_model.*
    save_file({"vision_model." + k: v for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 70, "width": 70}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    proj = {"layers.1.weight": torch.ones(128), "layers.1.bias": torch.zeros(128), "layers.2.weight": 0.1 * torch.randn(256, 128),
            "layers.2.bias": torch.zeros(256), "layers.4.weight": 0.1 * torch.randn(256, 256), "layers.4.bias": torch.zeros(256)}
    (root / "mm_projector").mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in proj.items()}, str(root / "mm_projector" / "model.safetensors"))
    proj_cfg = {"architectures": ["MultimodalProjector"], "mm_projector_type": "mlp_downsample", "model_type": "v2l_projector"}
    (root / "mm_projector" / "config.json").write_text(json.dumps(proj_cfg))
    (root / "config.json").write_text(json.dumps({
        "_name_or_path": root.name, "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
        "llm_cfg": json.loads((root / "llm" / "config.json").read_text()), "vision_tower_cfg": json.loads((root / "vision_tower" / "config.json").read_text()),
        "mm_projector_cfg": proj_cfg, "hidden_size": 256, "mm_hidden_size": 32, "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": "resize", "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "torch_dtype": "bfloat16"}))
    return root


def measure(backend: HFVLMBackend, n_new: int, reps: int) -> dict:
    """Interleaved runs with the constraints on and off; tokens/s per run and what the runs produced."""
    tok = backend.tokenizer
    script = tok(SCRIPT, add_special_tokens=False)["input_ids"]
    image = np.random.default_rng(0).integers(0, 256, size=(256, 256), dtype=np.uint8)
    messages = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    backend._eos = []  # decode exactly n_new tokens on both paths
    real_kwargs = vlm_generate.generation_kwargs
    rates: dict[str, list[float]] = {"on": [], "off": []}
    medians: dict[str, list[float]] = {"on": [], "off": []}
    texts, seen, spent = {}, [], []

    def run(on: bool) -> None:
        timer = StepTimer()

        def kwargs(*a, **k):
            out = real_kwargs(*a, **k)
            constraints = list(out.get("logits_processor") or [])
            seen.append(constraints)
            return {**out, "logits_processor": LogitsProcessorList([ScriptBias(script), *(Timed(c, spent) for c in constraints), timer])}

        vlm_generate.generation_kwargs = kwargs
        try:
            cfg = GenerationConfig(max_new_tokens=n_new)
            constraints = DecodingConstraints(**CONSTRAINED) if on else None
            texts["on" if on else "off"] = "".join(backend.stream_chat(messages, [image], TOOLS, cfg, constraints=constraints))
        finally:
            vlm_generate.generation_kwargs = real_kwargs
        steps = timer.steps()
        if len(timer.times) != n_new:
            raise RuntimeError(f"the backend decoded {len(timer.times)} tokens, expected {n_new}; the comparison would be unfair.")
        rates["on" if on else "off"].append(len(steps) / sum(steps))
        medians["on" if on else "off"].append(1.0 / statistics.median(steps))

    run(True)  # warm-up: caches, the tokenizer's index
    run(False)
    for kept in (*rates.values(), *medians.values(), spent):
        kept.clear()
    for i in range(reps):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            run(on)
    recorded = [f for procs in seen for p in procs for f in getattr(p, "failures", [])]
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"tok_s_constrained": round(on, 1), "tok_s_free": round(off, 1), "ratio": round(on / off, 4),
            "ratio_of_median_steps": round(statistics.median(medians["on"]) / statistics.median(medians["off"]), 4),
            "constraints_ms_per_step": round(1e3 * sum(spent) / (reps * n_new), 4),
            # the ratio the constraints' own time implies (free step + their time): unmoved by other work's noise
            "ratio_from_constraint_time": round(1 / (1 + off * sum(spent) / (reps * n_new)), 4), "vocabulary": len(tok), "new_tokens": n_new, "repeats": reps, "constraint_failures": recorded,
            "text_constrained": texts["on"][:400], "text_free": texts["off"][:400]}


def per_token_cost(tokenizer, steps: int) -> dict:
    """Seconds per call of the first implementation vs this one, in the states it is most costly in."""
    states = {"reference": "The left kidney volume is [[left kid", "answer side": "The left kidney volume is 142 mL and the ri"}
    out = {}
    for state, text in states.items():
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        for name, make in (("first", PerVocabularyReference if state == "reference" else PerVocabularySide), ("now", None)):
            if state == "reference":
                proc = (make or ReferenceConstraint)(tokenizer, KEYS, asked=ASKED)
            else:
                proc = (make or SideConstraint)(tokenizer, "left", in_answer=True)
            n = steps if make else 50 * steps
            t0 = time.perf_counter()
            for _ in range(n):
                row = proc(ids, torch.zeros(1, len(tokenizer)))
            out[f"{state}_{name}_s_per_token"] = (time.perf_counter() - t0) / n
            out[f"{state}_{name}_banned"] = int((row == -float("inf")).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (< 1 minute on 2 cores once the 128k model is cached)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps, n_new, old_steps = (2, 72, 1) if args.quick else (6, 160, 3)  # 72 tokens: quick runs reach past the tool call

    results, builds = {}, {}
    for label, path in (("default", DEFAULT_MODEL), ("128k", None)):
        t0 = time.perf_counter()
        model = load_model(path or vila_model_128k())
        builds[f"{label}_load_s"] = round(time.perf_counter() - t0, 2)
        backend = HFVLMBackend(model)
        t0 = time.perf_counter()
        index = token_index(backend.tokenizer)
        for side, mp in (("right", 2), ("right", 4)):
            index.side_sets(side, mp)
        index.quote_sets()
        builds[f"{label}_token_index_s"] = round(time.perf_counter() - t0, 2)
        results[label] = measure(backend, n_new, reps)
        if label == "128k":
            results[label]["per_token_cost"] = per_token_cost(backend.tokenizer, old_steps)
        print(label, {k: v for k, v in results[label].items() if not k.startswith("text")}, flush=True)

    ratios = {f"constrained_vs_free_{label}": {"value": r["ratio"], "target": 0.9, "better": "higher"} for label, r in results.items()}
    cost = results["128k"]["per_token_cost"]
    result = {"benchmark": "constraints", "ratios": ratios, "details": {
        "quick": args.quick, "threads": torch.get_num_threads(), "statistic": "tokens/s = steps / summed step time per run, median of interleaved runs",
        "models": {"default": "vlm/weights/default (shipped)", "128k": "VILA layout, random Llama 4x256, byte-level BPE 128,000 + 256 specials"},
        "constraints": {k: list(v) if isinstance(v, tuple) else asdict(v) if is_dataclass(v) else v for k, v in CONSTRAINED.items()},
        **builds, **results}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "constraints.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    rows = ["| metric | default model | 128k-vocabulary VILA-layout model | target |", "|---|---|---|---|",
            f"| constrained_vs_free | {results['default']['ratio']:.3f} | {results['128k']['ratio']:.3f} | ≥ 0.9 |",
            f"| tokens/s, constraints on | {results['default']['tok_s_constrained']:.1f} | {results['128k']['tok_s_constrained']:.1f} | |",
            f"| tokens/s, constraints off | {results['default']['tok_s_free']:.1f} | {results['128k']['tok_s_free']:.1f} | |",
            f"| constraints' own time per step (ms) | {results['default']['constraints_ms_per_step']:.3f} | {results['128k']['constraints_ms_per_step']:.3f} | |",
            f"| ratio implied by that time | {results['default']['ratio_from_constraint_time']:.3f} | {results['128k']['ratio_from_constraint_time']:.3f} | |",
            f"| vocabulary | {results['default']['vocabulary']} | {results['128k']['vocabulary']} | |",
            f"| token index build (s, once per tokenizer) | {builds['default_token_index_s']} | {builds['128k_token_index_s']} | |",
            "", "Per token on the 128k tokenizer (one processor call):", "",
            "| state | first implementation (s) | now (ms) |", "|---|---|---|",
            *(f"| {s} | {cost[f'{s}_first_s_per_token']:.2f} | {1e3 * cost[f'{s}_now_s_per_token']:.3f} |" for s in ("reference", "answer side"))]
    (RESULTS / "constraints.md").write_text("# constraints benchmark\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
