"""VLM speed: time to first token of a first question vs a follow-up on the same image, and decode
speed of the in-process backend vs plain ``generate`` on the same language model.

Model: a 6-layer, 256-wide Llama and a 6-layer SigLIP tower at 384 px (27×27 patches → 196 image
tokens after mlp_downsample), random weights; the prompt carries the system prompt, three expert tool
schemas, the image and the question, as the agent sends them.

    python benchmarks/vlm.py [--quick]

TTFT is the fastest of the repeats, decode speed the median time of one decoding step (on a shared
machine other work only ever adds time).
Writes benchmarks/results/vlm.json and vlm.md. Ratios: ``followup_ttft_vs_first`` (target ≤ 0.2),
``decode_vs_generate`` (target ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vlm.generate as vlm_generate  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402
from vlm.backends.base import GenerationConfig  # noqa: E402
from vlm.backends.hf_vlm import HFVLMBackend  # noqa: E402
from vlm.model import M3Config, M3Model  # noqa: E402
from vlm.projector import build_projector  # noqa: E402
from vlm.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402
from vlm.vision_tower import VisionTower  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = [
    {"type": "function", "function": {"name": "ct_segmentation", "description": "CT segmentation of 9 organs and 3 lesion types on a 3D CT series; returns the mask, volumes in mL, lesion counts and diameters in mm.",
     "parameters": {"type": "object", "properties": {"targets": {"type": "string", "enum": ["everything", "organs", "lesions", "liver", "spleen", "liver tumor"]}}}}},
    {"type": "function", "function": {"name": "mri_brain_tumor", "description": "Brain tumour segmentation from T1, T1c, T2 and FLAIR MRI; returns necrotic core, edema and enhancing tumour volumes in mL.",
     "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "cxr_classification", "description": "Chest radiograph multi-label classification: cardiomegaly, pleural effusion, nodule, pneumothorax, consolidation, with probabilities.",
     "parameters": {"type": "object", "properties": {}}}},
]
CORPUS = [t["function"]["description"] for t in TOOLS] * 20 + [
    "What is the liver volume on this CT? The liver volume is 1523.4 mL according to the segmentation.",
    "Is there a pleural effusion? The expert reports no pleural effusion, probability 0.08.",
] * 40


class StepTimer(LogitsProcessor):
    """Records the time of every decoding step (the logits processor runs once per step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores

    def steps(self) -> list[float]:
        """Seconds between consecutive steps (the first step, the prefill, is not a decode step)."""
        return [b - a for a, b in zip(self.times, self.times[1:])]


def build_model(seed: int = 0) -> M3Model:
    """Random tiny-but-realistic model: Llama 6×256 + SigLIP 6×256 at 384 px."""
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    tok = train_tokenizer(CORPUS, None, TokenizerConfig(vocab_size=2000))
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                                       bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                                                  image_size=384, patch_size=14)).eval()
    tower = VisionTower(siglip, kind="siglip_vision_model", image_size=384, hidden_size=256)
    return M3Model(M3Config(), tower, build_projector("mlp_downsample", 256, 256).eval(), llm, tok).eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (< 1 minute on 2 cores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps, n_new = (4, 48) if args.quick else (8, 128)

    model = build_model()
    backend = HFVLMBackend(model)
    backend._eos = []  # random weights: decode exactly max_new_tokens on both paths
    image = np.random.default_rng(0).integers(0, 256, size=(512, 512), dtype=np.uint8)
    first = [{"role": "system", "content": "You are m3, a medical imaging assistant."},
             {"role": "user", "content": "<image>\nWhat is the liver volume on this CT?"}]
    one = GenerationConfig(max_new_tokens=1)
    drain = lambda msgs, cfg, key: "".join(backend.stream_chat(msgs, [image], TOOLS, cfg, key))  # noqa: E731

    # warm-up (allocator, kernels)
    drain(first, GenerationConfig(max_new_tokens=4), "warm")
    ttft_first, ttft_follow, prompt_len, follow_new = [], [], 0, 0
    for i in range(reps):
        key = f"bench-{i}"
        ttft_first.append(timed(lambda: drain(first, one, key)))
        prompt_len = backend.caches.get(key).prompt_tokens
        answer = drain(first, GenerationConfig(max_new_tokens=24), key)
        follow = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the spleen volume?"}]
        ttft_follow.append(timed(lambda: drain(follow, one, key)))
        cache = backend.caches.get(key)
        follow_new = cache.prompt_tokens - cache.reused_tokens

    # decode speed: the median time of one decoding step (timestamps taken by a logits processor at
    # every step, so contention bursts on a shared machine do not count), ours (streamed, cached
    # path) vs plain generate on the same LM and prompt length, interleaved
    ids = torch.randint(1, len(model.tokenizer), (1, prompt_len))
    mask = torch.ones_like(ids)
    ours_steps, plain_steps = [], []
    real_kwargs = vlm_generate.generation_kwargs
    for i in range(reps):
        timer = StepTimer()
        vlm_generate.generation_kwargs = lambda *a, **k: {**real_kwargs(*a, **k), "logits_processor": LogitsProcessorList([timer])}
        try:
            drain(first, GenerationConfig(max_new_tokens=n_new), f"dec-{i}")
        finally:
            vlm_generate.generation_kwargs = real_kwargs
        if len(timer.times) != n_new:
            raise RuntimeError(f"the backend decoded {len(timer.times)} tokens, expected {n_new}; the comparison would be unfair.")
        ours_steps += timer.steps()
        timer = StepTimer()
        with torch.no_grad():
            out = model.llm.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, logits_processor=LogitsProcessorList([timer]))
        if out.shape[1] != prompt_len + n_new:
            raise RuntimeError(f"plain generate made {out.shape[1] - prompt_len} tokens, expected {n_new}.")
        plain_steps += timer.steps()
    d_ours, d_plain = 1.0 / statistics.median(ours_steps), 1.0 / statistics.median(plain_steps)

    f, u = min(ttft_first), min(ttft_follow)
    result = {
        "benchmark": "vlm",
        "ratios": {
            "followup_ttft_vs_first": {"value": round(u / f, 4), "target": 0.2, "better": "lower"},
            "decode_vs_generate": {"value": round(d_ours / d_plain, 4), "target": 0.95, "better": "higher"},
        },
        "details": {
            "quick": args.quick, "repeats": reps, "statistic": "TTFT: min over repeats; decode: median step time", "new_tokens": n_new, "threads": torch.get_num_threads(),
            "prompt_tokens_first": prompt_len, "image_tokens": model.tokens_per_image, "followup_new_tokens": follow_new,
            "ttft_first_s": round(f, 4), "ttft_followup_s": round(u, 4),
            "decode_tok_s_backend": round(d_ours, 1), "decode_tok_s_generate": round(d_plain, 1),
            "model": "Llama 6x256 + SigLIP 6x256 @384px, random weights",
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vlm.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        "| metric | value | target |", "|---|---|---|",
        f"| followup_ttft_vs_first | {u / f:.3f} | ≤ 0.2 |",
        f"| decode_vs_generate | {d_ours / d_plain:.3f} | ≥ 0.95 |",
        f"| TTFT first question (s) | {f:.3f} | |", f"| TTFT follow-up (s) | {u:.3f} | |",
        f"| decode tok/s, backend | {d_ours:.1f} | |", f"| decode tok/s, plain generate | {d_plain:.1f} | |",
        f"| prompt tokens (first) / new tokens (follow-up) | {prompt_len} / {follow_new} | |",
    ]
    (RESULTS / "vlm.md").write_text("# vlm benchmark\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
