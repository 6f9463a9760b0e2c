"""Flextron elastic distillation, routing and export: every width trains at once, resumes exactly, and one
width deploys as a plain model folder."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.compress.conftest import patterned_ids, tiny_llama
from vlm.compress.calibration import mean_loss, pack_tokens
from vlm.compress.cli import add_parsers
from vlm.compress.elastic import (
    Budget,
    DistillConfig,
    ElasticError,
    ElasticSpace,
    apply_ordering,
    count_params,
    export_subnetwork,
    make_elastic,
    measure_latency,
    parse_budget,
    plan_applied,
    route,
    save_elastic,
    train_elastic,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default"


def test_elastic_distillation_trains_the_small_widths_toward_the_full_model(tmp_path, trained_lm):
    base, ids = trained_lm
    lm = copy.deepcopy(base)
    config = DistillConfig(steps=25, lr=3e-3, batch_size=16, checkpoint_every=100, seed=0)
    result = train_elastic(lm, ids, tmp_path / "run", config, progress=False)
    assert result.status == "trained" and len(result.history) == 25
    space, heldout = result.space, patterned_ids(64, 32, seed=7)
    untrained = copy.deepcopy(base)  # the same importance order and widths, without the elastic training
    apply_ordering(untrained, result.ordering)
    make_elastic(untrained)
    with plan_applied(lm, space.smallest(), space), plan_applied(untrained, space.smallest(), space):
        assert mean_loss(lm, heldout) < mean_loss(untrained, heldout) - 0.1  # the quarter width learnt from the full model
    assert mean_loss(lm, heldout) < mean_loss(base, heldout) + 0.3  # and the full width stayed close to the original


def test_a_resumed_elastic_run_reaches_the_weights_of_an_uninterrupted_one(tmp_path):
    ids = patterned_ids(64, 16)
    config = DistillConfig(steps=4, lr=1e-2, batch_size=8, checkpoint_every=2, random_subnets=2)
    whole = tiny_llama()
    train_elastic(whole, ids, tmp_path / "a", config, progress=False)
    split = tiny_llama()
    first = train_elastic(split, ids, tmp_path / "b", config, stop_after=2, progress=False)
    assert first.status == "stopped at step 2" and (tmp_path / "b" / "checkpoints" / "step_000002").is_dir()
    with pytest.raises(ElasticError, match="--resume"):
        train_elastic(tiny_llama(), ids, tmp_path / "b", config, progress=False)
    with pytest.raises(ElasticError, match="other settings"):
        train_elastic(tiny_llama(), ids, tmp_path / "b", DistillConfig(**{**config.to_dict(), "lr": 1e-3}), resume=True, progress=False)
    resumed = tiny_llama()  # a fresh process: the original weights, then the checkpoint
    second = train_elastic(resumed, ids, tmp_path / "b", config, resume=True, progress=False)
    assert second.status == "resumed at step 2" and [h[0] for h in second.history] == [1, 2, 3, 4]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_router_fits_a_parameter_budget_and_per_layer_widths_are_no_worse_than_uniform(trained_lm):
    lm, ids = trained_lm
    lm = make_elastic(copy.deepcopy(lm))
    space = ElasticSpace(lm)
    full = count_params(lm, None, space)
    uniform = route(lm, space, parse_budget("params=0.7"), ids[:32], uniform=True)
    assert uniform.params <= 0.7 * full and uniform.uniform and len(set(uniform.plan)) == 1
    per_layer = route(lm, space, Budget("params", 0.7), ids[:32])
    assert per_layer.params <= 0.7 * full
    assert per_layer.loss <= uniform.loss + 1e-9
    with pytest.raises(ElasticError, match="smallest costs"):
        route(lm, space, Budget("params", 1000), ids[:8])
    with pytest.raises(ElasticError, match="budget must look like"):
        parse_budget("flops=3")


def test_a_latency_table_measured_here_predicts_a_faster_forward_for_smaller_widths():
    # wide enough and measured often enough that a 4x narrower MLP is faster than timer noise on a busy machine
    lm = make_elastic(tiny_llama(layers=2, hidden=256))
    space = ElasticSpace(lm)
    table = measure_latency(lm, space, seq_len=128, repeats=7)
    assert len(table.attention_ms) == 2 and len(table.mlp_ms[0]) == len(space.mlp_levels)
    assert table.predict(space.smallest()) < table.predict(space.full())
    chosen = route(lm, space, Budget("latency_ms", table.predict(space.full()) * 0.99), patterned_ids(8, 16), table=table)
    assert table.predict(chosen.plan) <= table.predict(space.full()) * 0.99


def test_a_budgeted_width_of_the_shipped_model_exports_as_a_plain_folder_that_the_ordinary_loader_reads(tmp_path):
    from experts.manifest import verify_manifest
    from vlm.model import load_model

    model = load_model(DEFAULT_MODEL)
    lm, tok = model.llm, model.tokenizer
    make_elastic(lm)
    save_elastic(DEFAULT_MODEL, lm, tok, tmp_path / "elastic", {"config": DistillConfig().to_dict(), "status": "untrained"})
    chat = tok.apply_chat_template([{"role": "user", "content": "Is the liver normal?"}, {"role": "assistant", "content": "Yes."}], tokenize=False)
    data = pack_tokens(tok, [chat] * 20, 32)
    out, result = export_subnetwork(tmp_path / "elastic", tmp_path / "half", Budget("params", 0.6), data, dtype="float32")
    exported = load_model(out)  # the ordinary loader
    assert sum(p.numel() for p in exported.llm.parameters()) == result.params <= 0.6 * count_params(lm)
    w = result.plan[0]
    assert exported.llm.config.num_attention_heads == w.heads and exported.llm.config.intermediate_size == w.mlp
    with torch.no_grad(), plan_applied(lm, result.plan):
        assert torch.allclose(exported.llm(input_ids=data[:2]).logits, lm(input_ids=data[:2]).logits, atol=1e-4)
    card = (out / "model_card.md").read_text()
    assert "params=0.6" in card and f"{result.params:,}" in card and "ms" in card
    verify_manifest(out)


def _run(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_m3_compress_flextron_then_flextron_export_write_loadable_models(tmp_path, tiny_lm):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tiny_lm.save_pretrained(tmp_path / "lm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a 12 mm lesion in the left kidney"] * 20, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path / "lm")
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"a {i} mm lesion in the left kidney"}) for i in range(120)))
    common = ["--data", str(data), "--seq-len", "16"]
    assert _run(["compress", "flextron", "--model", str(tmp_path / "lm"), "--out", str(tmp_path / "el"), "--steps", "3",
                 "--batch-size", "4", *common]) == 0
    record = json.loads((tmp_path / "el" / "flextron.json").read_text())
    assert record["status"] == "trained" and record["steps_done"] == 3 and len(record["widths"]) == 2
    assert not (tmp_path / "el" / "checkpoints").exists() and (tmp_path / "el" / "flextron_loss.png").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "el").config.num_attention_heads == 4  # full width, plain loader
    assert _run(["compress", "flextron", "--model", str(tmp_path / "lm"), "--out", str(tmp_path / "el"), "--steps", "3",
                 "--batch-size", "4", *common]) == 0  # finished with the same settings: left alone
    assert _run(["compress", "flextron-export", "--model", str(tmp_path / "el"), "--out", str(tmp_path / "small"),
                 "--budget", "params=0.8", *common]) == 0
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert small.config.num_attention_heads == 2 and (tmp_path / "small" / "manifest.json").is_file()
    assert sum(p.numel() for p in small.parameters()) <= 0.8 * sum(p.numel() for p in tiny_lm.parameters())
