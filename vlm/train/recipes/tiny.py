"""``tiny``: the embedded default model, built on a small CPU budget: the stage-1 RADIO-style encoder
(``vlm/encoder/weights``, 6 blocks × 192) as the tower on 128 px pictures (16 image tokens after the 2×2
merge), kept frozen; a 4-layer 256-wide Llama LM and the projector fully fine-tuned; the BPE tokenizer
trained on the project's corpus; float32 on two threads (the whole build owns a 2-core machine: a
medical-ift step takes 0.89 s on two threads, 1.43 s on one), weights written in float16."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm.train.recipes import DataSpec, ModelSpec, Recipe, StageSpec

__all__ = ["RECIPE"]


@dataclass
class RECIPE(Recipe):
    name: str = "tiny"
    data: DataSpec = field(default_factory=lambda: DataSpec(
        train_cases={"ct": 300, "mri": 200, "cxr": 300}, test_cases={"ct": 25, "mri": 25, "cxr": 25}, questions_per_case=6,
        organ_question_cases=400))  # ~100 more one-organ conversations: with 68 (21 naming a side) the model wrote "right" for "left"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        image_size=128, vision_hidden=128, vision_depth=3, vision_heads=2, llm_hidden=256, llm_layers=4, llm_heads=4,
        llm_kv_heads=4, llm_intermediate=640, vocab_size=3000, max_length=640))  # the longest expert conversations are ~580 tokens; at 448 their follow-ups were cut
    # The tower stays the distilled encoder: trained end to end with the LM on a few thousand phantom
    # questions it lost what the picture holds (heart size on the held-out closed questions 1.00 frozen vs
    # 0.83 trained, after the ift stage), and closed answers came out the same with another case's picture.
    stages: dict[str, StageSpec] = field(default_factory=lambda: {
        "align_projector": StageSpec(steps=40, batch_size=16, lr=2e-3, train=("projector",), mix={"align": 1.0}, checkpoint_every=20),
        "align": StageSpec(steps=450, batch_size=16, lr=1.5e-3, weight_decay=0.01, train=("projector", "llm"),
                           mix={"align": 0.6, "ift": 0.4}, checkpoint_every=100),
        "ift": StageSpec(steps=550, batch_size=16, lr=1e-3, weight_decay=0.01, train=("projector", "llm"),
                         mix={"ift": 0.75, "align": 0.25}, checkpoint_every=100),
        # Most of the hour goes here: the expert conversations and the questions routed through experts are
        # the bulk of what the model must learn, and half of each batch keeps the picture questions going.
        "medical-ift": StageSpec(steps=2400, batch_size=16, lr=8e-4, weight_decay=0.01, train=("projector", "llm"),
                                 mix={"medical-ift": 0.45, "ift": 0.45, "align": 0.1}, checkpoint_every=200,
                                 leave_out={"align": ("cxr", "ct")}),  # radiograph and CT reports are written with their expert from here on
    })
    # Stage 1 is not re-run by `m3 train all --recipe tiny`: the tower starts from the shipped encoder. These are
    # that encoder's settings (its model card), used by `m3 train vision --recipe tiny` or a recipe file with
    # "vision_stage": true.
    vision: dict = field(default_factory=lambda: dict(
        hidden_size=192, depth=6, num_heads=3, num_registers=4, image_size=128, resolutions=[64, 128], n_ct_cases=40, slices_per_ct=10,
        n_cxr_cases=1200, held_out_fraction=0.2, steps=2500, batch_size=32))
    mixed_precision: str = "no"
    threads: int = 2
    eval_limit: int = 60  # items per eval part after training (VQA, reports, conversations)
