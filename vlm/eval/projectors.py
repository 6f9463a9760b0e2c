"""The projector comparison: VILA's 2×2 ``mlp_downsample`` against ToMe token merging (``vlm.token_merge``)
at the same number of LM tokens per image, at the recipe's input resolution and at twice it.

Each variant trains ``align`` and ``ift`` of one recipe (steps scaled by ``steps_scale``) from scratch
on the same data and seed, then answers the same held-out questions and writes the same reports. One
seed on a small budget: read differences smaller than a few points as noise.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

from vlm.eval.tables import markdown_table

__all__ = ["compare_projectors", "projector_variants"]


def projector_variants(image_size: int, patch_size: int) -> list[dict]:
    """The three variants; all give the LM ``(image_size / patch_size / 2)²`` tokens per image."""
    tokens = (image_size // patch_size // 2) ** 2
    return [
        {"name": f"mlp_downsample @ {image_size} px", "projector_type": "mlp_downsample", "projector_options": {}, "image_size": image_size},
        {"name": f"token_merge @ {image_size} px", "projector_type": "token_merge", "projector_options": {"budget": tokens},
         "image_size": image_size},
        {"name": f"token_merge @ {2 * image_size} px", "projector_type": "token_merge", "projector_options": {"budget": tokens},
         "image_size": 2 * image_size},
    ]


def compare_projectors(recipe_name: str, out: str | Path, *, steps_scale: float = 1.0, experts: str = "truth", limit: int = 0) -> Path:
    """Train and evaluate every variant on ``recipe_name``'s budget; returns ``projectors.md``."""
    from vlm.eval.harness import evaluate_model
    from vlm.train.build import build_data
    from vlm.train.run_folder import prepare
    from vlm.train.recipes import get_recipe
    from vlm.train.stages import run_stage

    out = Path(out)
    base = get_recipe(recipe_name)
    data = build_data(base, out / "data")
    rows, details = [], []
    for v in projector_variants(base.model.image_size, base.model.patch_size):
        recipe = copy.deepcopy(base)
        recipe.model.projector_type, recipe.model.projector_options = v["projector_type"], v["projector_options"]
        recipe.model.image_size = v["image_size"]
        recipe.vision_stage = False  # every variant's tower starts from model.encoder_path (stage 1 is not compared here)
        for spec in recipe.stages.values():
            spec.steps = max(2, int(round(spec.steps * steps_scale)))
            spec.checkpoint_every = spec.steps
        run = out / v["name"].replace(" ", "").replace("@", "_")
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "data").exists():
            os.symlink(data.resolve(), run / "data")
        t0 = time.perf_counter()
        model = prepare(recipe, run, progress=False)
        model = run_stage("align", recipe, run, model, resume=True, progress=False)
        model = run_stage("ift", recipe, run, model, resume=True, progress=False)
        seconds = time.perf_counter() - t0
        report = evaluate_model(model, data, run / "eval", experts=experts, limit=limit, progress=False)
        h = report["headline"]
        tokens = v["projector_options"].get("budget", (v["image_size"] // recipe.model.patch_size // 2) ** 2)
        patches = (v["image_size"] // recipe.model.patch_size) ** 2
        rows.append([v["name"], patches, tokens, h["closed_accuracy"], h["open_recall"], h["finding_f1"], round(seconds)])
        details.append({**v, "patches": patches, "lm_tokens_per_image": tokens, "headline": h, "train_seconds": seconds})
    steps = {k: max(2, int(round(s.steps * steps_scale))) for k, s in base.stages.items() if k in ("align_projector", "align", "ift")}
    md = out / "projectors.md"
    md.write_text("\n".join([
        f"# Projector options at equal LM tokens per image ({recipe_name} recipe budget)", "",
        f"Each row: align + ift from scratch, steps {steps}, batch {base.stages['ift'].batch_size}, seed {base.seed}; "
        "evaluated on the same held-out phantoms through the agent. One seed on a small budget: differences of a few "
        "points are noise, not evidence.", "",
        markdown_table(["projector", "patches", "LM tokens / image", "closed acc.", "open recall", "report finding F1", "train s"], rows), "",
    ]))
    (out / "projectors.json").write_text(json.dumps(details, indent=2) + "\n")
    return md
