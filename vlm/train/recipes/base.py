"""``base``: the same pipeline at a size for one GPU (a 12-block 384-wide tower at 256 px, a 12-layer
768-wide LM, LoRA in the last stage). Not trained here: a CPU would need days."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm.train.recipes import DataSpec, LoraSpec, ModelSpec, Recipe, StageSpec

__all__ = ["RECIPE"]


@dataclass
class RECIPE(Recipe):
    name: str = "base"
    data: DataSpec = field(default_factory=lambda: DataSpec(
        train_cases={"ct": 3000, "mri": 3000, "cxr": 3000}, test_cases={"ct": 200, "mri": 200, "cxr": 200}, questions_per_case=8))
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        image_size=256, vision_hidden=384, vision_depth=12, vision_heads=6, llm_hidden=768, llm_layers=12, llm_heads=12,
        llm_kv_heads=4, llm_intermediate=2048, vocab_size=16000, max_length=1024, weights_dtype="bfloat16"))
    stages: dict[str, StageSpec] = field(default_factory=lambda: {
        "align_projector": StageSpec(steps=1000, batch_size=64, lr=1e-3, train=("projector",), mix={"align": 1.0}, checkpoint_every=500),
        "align": StageSpec(steps=6000, batch_size=64, lr=2e-4, weight_decay=0.01, train=("projector", "llm", "tower"),
                           mix={"align": 0.7, "ift": 0.3}, checkpoint_every=500),
        "ift": StageSpec(steps=8000, batch_size=64, lr=1e-4, weight_decay=0.01, train=("projector", "llm"),
                         mix={"ift": 0.8, "align": 0.2}, checkpoint_every=500),
        "medical-ift": StageSpec(steps=6000, batch_size=64, lr=2e-4, train=("projector", "llm"), lora=LoraSpec(r=64, alpha=128),
                                 mix={"medical-ift": 0.6, "ift": 0.3, "align": 0.1}, checkpoint_every=500,
                                 leave_out={"align": ("cxr", "ct")}),  # radiograph and CT reports are written with their expert from here on
    })
    vision_stage: bool = True  # its own 384-wide encoder, distilled first
    vision: dict = field(default_factory=lambda: dict(
        image_size=256, resolutions=[128, 256], n_ct_cases=400, slices_per_ct=12, n_cxr_cases=5000, steps=20000, batch_size=64,
        checkpoint_every=500, featsharp_steps=500))
    threads: int = 0  # all cores
