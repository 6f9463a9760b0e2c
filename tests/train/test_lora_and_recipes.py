"""LoRA phases, recipe files and the CLI surface."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch


def test_lora_phase_trains_adapters_only_and_merges_them(micro_run, tmp_path):
    from safetensors.torch import load_file

    from vlm.model import load_model
    from vlm.train.recipes import LoraSpec, get_recipe
    from vlm.train.stages import train_phase

    out, _ = micro_run
    recipe = get_recipe("micro")
    start = out / "ift" / "ift" / "final"
    spec = replace(recipe.stages["medical-ift"], steps=6, train=("llm",), lora=LoraSpec(r=4, alpha=8), checkpoint_every=3)
    final, metrics = train_phase("medical-ift", spec, recipe, out / "data", start, tmp_path / "lora", progress=False)
    before, after = load_model(start), load_model(final)
    llm_total = sum(p.numel() for p in before.llm.parameters())
    assert 0 < metrics["trainable_parameters"]["llm"] < 0.2 * llm_total
    assert metrics["trainable_parameters"]["tower"] == 0 and metrics["trainable_parameters"]["projector"] == 0
    keys = load_file(str(final / "llm" / "model.safetensors")).keys()
    assert not any("lora" in k for k in keys)  # merged: a plain Llama checkpoint
    q0 = before.llm.model.layers[0].self_attn.q_proj.weight
    q1 = after.llm.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q0, q1)
    assert torch.equal(before.mm_projector.layers[2].weight, after.mm_projector.layers[2].weight)


@pytest.mark.parametrize("name", ["micro", "tiny", "base"])
def test_recipes_round_trip_and_define_every_phase(name, tmp_path):
    from vlm.train.recipes import get_recipe, recipe_from_dict

    recipe = get_recipe(name)
    assert set(recipe.stages) == {"align_projector", "align", "ift", "medical-ift"}
    again = recipe_from_dict(json.loads(recipe.save(tmp_path).read_text()))
    assert asdict(again) == asdict(recipe)


def test_tiny_recipe_fits_the_bundle_budget():
    """The default VLM must stay under about 25 MB (float16 weights)."""
    from vlm.train.build import build_model
    from vlm.train.recipes import get_recipe
    from vlm.tokenizer import train_tokenizer

    recipe = get_recipe("tiny")
    tok = train_tokenizer(["a b c"], None)
    model = build_model(recipe, tok)
    n = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.llm.get_input_embeddings().parameters())
    n += recipe.model.vocab_size * recipe.model.llm_hidden  # the trained vocabulary's embeddings (tied LM head)
    assert n * 2 / 1e6 < 25


def test_unknown_recipe_and_missing_previous_stage_are_clear_errors(tmp_path):
    from vlm.train.build import TrainError
    from vlm.train.ift import run_ift
    from vlm.train.recipes import RecipeError, get_recipe

    with pytest.raises(RecipeError, match="micro"):
        get_recipe("huge")
    with pytest.raises(TrainError, match="m3 train align"):
        run_ift(get_recipe("micro"), tmp_path)


def test_train_cli_lists_the_stages():
    from app.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "medical-ift", "--recipe", "micro", "--out", "x", "--resume", "--steps", "3"])
    assert (args.stage, args.recipe, args.resume, args.steps) == ("medical-ift", "micro", True, 3)
    assert parser.parse_args(["train", "all", "--recipe", "tiny", "--install-default"]).install_default
    assert parser.parse_args(["train", "vision", "--steps", "5"]).steps == 5
