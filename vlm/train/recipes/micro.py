"""``micro``: seconds-long smoke recipe for the default test suite (every stage, stage 1 included, runs and
learns a little; the model is far too small to be useful)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm.train.recipes import DataSpec, ModelSpec, Recipe, StageSpec

__all__ = ["RECIPE"]


@dataclass
class RECIPE(Recipe):
    name: str = "micro"
    data: DataSpec = field(default_factory=lambda: DataSpec(
        train_cases={"ct": 3, "mri": 3, "cxr": 3}, test_cases={"ct": 1, "mri": 1, "cxr": 1}, questions_per_case=3))
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        image_size=64, vision_hidden=32, vision_depth=1, vision_heads=2, llm_hidden=64, llm_layers=2, llm_heads=2,
        llm_kv_heads=2, llm_intermediate=128, vocab_size=700, max_length=320, encoder_path=""))
    stages: dict[str, StageSpec] = field(default_factory=lambda: {
        "align_projector": StageSpec(steps=8, batch_size=4, lr=3e-3, train=("projector",), mix={"align": 1.0}, checkpoint_every=4),
        "align": StageSpec(steps=10, batch_size=4, lr=3e-3, train=("projector", "llm", "tower"), mix={"align": 1.0}, checkpoint_every=5),
        "ift": StageSpec(steps=10, batch_size=4, lr=3e-3, train=("projector", "llm"), mix={"ift": 0.8, "align": 0.2}, checkpoint_every=5),
        "medical-ift": StageSpec(steps=12, batch_size=4, lr=3e-3, train=("projector", "llm"),
                                 mix={"medical-ift": 0.7, "ift": 0.2, "align": 0.1}, checkpoint_every=5,
                                 leave_out={"align": ("cxr", "ct")}),
    })
    vision_stage: bool = True  # stage 1 on a few phantoms, so `m3 train all --recipe micro` runs all four stages
    vision: dict = field(default_factory=lambda: dict(
        image_size=64, resolutions=[64], n_ct_cases=2, slices_per_ct=3, n_cxr_cases=8, held_out_fraction=0.5, clip_steps=4,
        num_registers=1, steps=6, batch_size=4, checkpoint_every=2))
    mixed_precision: str = "no"
    threads: int = 1
    eval_limit: int = 3
