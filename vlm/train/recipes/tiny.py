"""``tiny``: the embedded default model. Built on 2 CPU cores in about an hour: a 4-block RADIO-style
tower on 128 px pictures (16 image tokens after the 2×2 merge), a 6-layer 256-wide Llama LM, the BPE
tokenizer trained on the project's corpus; full fine-tuning throughout (bf16 autocast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm.train.recipes import DataSpec, ModelSpec, Recipe, StageSpec

__all__ = ["RECIPE"]


@dataclass
class RECIPE(Recipe):
    name: str = "tiny"
    data: DataSpec = field(default_factory=lambda: DataSpec(
        train_cases={"ct": 300, "mri": 220, "cxr": 300}, test_cases={"ct": 25, "mri": 25, "cxr": 25}, questions_per_case=6))
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        image_size=128, vision_hidden=192, vision_depth=4, vision_heads=3, llm_hidden=256, llm_layers=6, llm_heads=4,
        llm_kv_heads=4, llm_intermediate=704, vocab_size=3000, max_length=448))
    stages: dict[str, StageSpec] = field(default_factory=lambda: {
        "align_projector": StageSpec(steps=60, batch_size=16, lr=2e-3, train=("projector",), mix={"align": 1.0}, checkpoint_every=30),
        "align": StageSpec(steps=500, batch_size=16, lr=1e-3, weight_decay=0.01, train=("projector", "llm", "tower"),
                           mix={"align": 0.6, "ift": 0.4}, checkpoint_every=100),
        "ift": StageSpec(steps=700, batch_size=16, lr=7e-4, weight_decay=0.01, train=("projector", "llm", "tower"),
                         mix={"ift": 0.75, "align": 0.25}, checkpoint_every=100),
        "medical-ift": StageSpec(steps=600, batch_size=16, lr=5e-4, weight_decay=0.01, train=("projector", "llm", "tower"),
                                 mix={"medical-ift": 0.55, "ift": 0.3, "align": 0.15}, checkpoint_every=100),
    })
    eval_limit: int = 0
