"""Calibration text: conversations are rendered as the agent renders them (chat template, tools, tool calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from vlm.compress.calibration import load_texts
from vlm.compress.errors import CompressError
from vlm.train.build import expert_tool_schemas

ROOT = Path(__file__).resolve().parents[2]
RECORD = {
    "id": "medical-ift-ct-1",
    "image": "images/ct_1_CT.png",
    "conversations": [
        {"from": "human", "value": "<image>\nHow big is the liver?"},
        {"from": "gpt", "value": '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call>'},
        {"from": "tool", "value": '{"expert": "ct_segmentation", "measurements": ["liver volume: 1253.3 mL"]}'},
        {"from": "gpt", "value": "The liver volume is 1253.3 mL."},
    ],
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "vlm/weights/default/llm")


def test_conversations_render_with_the_chat_template_and_tools(tmp_path, tokenizer):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps([RECORD]))
    [text] = load_texts(path, tokenizer, system_prompt="Be brief.", tools=expert_tool_schemas())
    assert text.startswith("<|system|>\nBe brief.")
    assert "ct_segmentation" in text.split("<|end|>")[0]  # the experts are listed in the system turn
    assert "<tool_call>" in text and "<|tool|>" in text and "1253.3 mL" in text
    assert "<image>" not in text  # the LM is calibrated on text alone
    # the same text the agent's template gives for these turns
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How big is the liver?"},
         {"role": "assistant", "content": RECORD["conversations"][1]["value"]},
         {"role": "tool", "content": RECORD["conversations"][2]["value"]},
         {"role": "assistant", "content": "The liver volume is 1253.3 mL."}],
        tools=expert_tool_schemas(), tokenize=False)
    assert text == expected


def test_without_a_chat_tokenizer_turns_are_joined(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text(json.dumps(RECORD) + "\n")
    [text] = load_texts(path)
    assert text.splitlines()[0] == "How big is the liver?" and "<|system|>" not in text


def test_bad_calibration_files_say_what_is_wrong(tmp_path):
    with pytest.raises(CompressError, match="does not exist"):
        load_texts(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(CompressError, match="neither `text` nor `conversations`"):
        load_texts(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def phantom_conversations(tmp_path_factory):
    from data.instructions import build_datasets

    out = tmp_path_factory.mktemp("conv")
    return build_datasets({"ct": 2, "cxr": 2}, out, seed=0, split="test", questions_per_case=2)


def test_vlm_batches_are_what_the_lm_sees_in_the_vlm(phantom_conversations):
    import torch

    from vlm.compress.calibration import calibration_size, iterate_batches, mean_loss, vlm_batches
    from vlm.compress.depth import load_pruned_lm
    from vlm.compress.oneshot import OneShotConfig, prune_oneshot

    model_dir = ROOT / "vlm/weights/default"
    files = [phantom_conversations["medical-ift"], phantom_conversations["ift"]]
    batches = vlm_batches(model_dir, files, per_file=4, batch_size=2)
    assert calibration_size(batches) == 8
    b = batches[0]
    assert b["inputs_embeds"].ndim == 3 and b["labels"].shape == b["attention_mask"].shape == b["inputs_embeds"].shape[:2]
    scored = b["labels"] != -100
    assert 0 < int(scored.sum()) < int(b["attention_mask"].sum())  # answers only, not prompts / pictures / padding
    lm = load_pruned_lm(model_dir / "llm", dtype=torch.float32)
    dense = mean_loss(lm, batches)
    assert dense < 1.5  # the trained model predicts its own kind of answers (a random LM: ~ln(vocab) ≈ 8)
    prune_oneshot(lm, batches, OneShotConfig(method="wanda"))  # activation statistics from the embedding batches
    assert mean_loss(lm, batches) > dense
    assert isinstance(next(iterate_batches(batches, 2)), dict)


def test_mft_and_depth_run_on_vlm_batches(phantom_conversations):
    import math

    import torch

    from vlm.compress.calibration import iterate_batches, mean_loss, vlm_batches
    from vlm.compress.depth import DepthConfig, angular_importance, load_pruned_lm, prune_depth
    from vlm.compress.mft import FinetuneConfig, finetune

    model_dir = ROOT / "vlm/weights/default"
    batches = vlm_batches(model_dir, [phantom_conversations["medical-ift"]], per_file=2, batch_size=2)
    lm = load_pruned_lm(model_dir / "llm", dtype=torch.float32)
    result = finetune(lm, iterate_batches(batches, 2), FinetuneConfig(method="mft", steps=2, lr=1e-4), progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    scores = angular_importance(lm, batches)
    assert len(scores["block"]) == lm.config.num_hidden_layers and all(s > 0 for s in scores["block"])
    prune_depth(lm, DepthConfig(blocks=[1], recovery="lowrank", rank=4), batches)
    assert math.isfinite(mean_loss(lm, batches))
