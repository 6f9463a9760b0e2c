"""Training samples are exactly what the agent shows the model, with labels on the assistant's words only."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def parts(micro_run):
    from vlm.model import load_model

    out, final = micro_run
    return out / "data", load_model(final)


def _sample(parts, stage, index):
    from vlm.agent import AGENT_SYSTEM_PROMPT
    from vlm.train.build import expert_tool_schemas
    from vlm.train.dataset import record_messages, tokenize_record

    data, model = parts
    rec = json.loads((data / f"{stage}_train.json").read_text())[index]
    sample = tokenize_record(rec, model.tokenizer, AGENT_SYSTEM_PROMPT, expert_tool_schemas(), model.image_token_index,
                             model.tokens_per_image, 10_000)
    return rec, record_messages(rec, AGENT_SYSTEM_PROMPT)[0], sample


def test_labels_cover_exactly_the_assistant_turns(parts):
    data, model = parts
    records = json.loads((data / "medical-ift_train.json").read_text())
    index = next(i for i, r in enumerate(records) if any(t["from"] == "tool" for t in r["conversations"]))
    rec, messages, sample = _sample(parts, "medical-ift", index)
    labelled = sample.labels[sample.labels != -100]
    expected = "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")
    assert model.tokenizer.decode(labelled.tolist(), skip_special_tokens=False) == expected
    assert '<tool_call>{"name": ' in expected  # the call is learnt, the tool's reply is not
    tool_text = next(m["content"] for m in messages if m["role"] == "tool")
    assert tool_text.split("\n")[-1] not in model.tokenizer.decode(labelled.tolist())


def test_training_text_equals_the_agents_prompt(parts):
    """The backend renders the agent's messages with the model's template; a training sample must be that
    text token for token (up to the assistant's reply)."""
    from vlm.backends.hf_vlm import HFVLMBackend
    from vlm.train.build import expert_tool_schemas

    data, model = parts
    rec, messages, sample = _sample(parts, "ift", 0)
    backend = HFVLMBackend(model)
    prompt = backend.prompt_ids(messages[:-1], expert_tool_schemas())
    expanded = model.expand_image_tokens(prompt)
    assert sample.input_ids[: len(expanded)].tolist() == expanded
    n_images = len(rec.get("images") or [rec["image"]])
    assert int((sample.input_ids == model.image_token_index).sum()) == n_images * model.tokens_per_image
    assert len(sample.images) == n_images


def test_mask_expert_tool_turns_carry_an_overlay_picture(parts):
    from vlm.train.dataset import MASK_EXPERTS

    data, _ = parts
    records = json.loads((data / "medical-ift_train.json").read_text())
    index = next(i for i, r in enumerate(records)
                 if any(t["from"] == "tool" and json.loads(t["value"])["expert"] in MASK_EXPERTS for t in r["conversations"]))
    rec, messages, sample = _sample(parts, "medical-ift", index)
    tool = next(m for m in messages if m["role"] == "tool")
    assert tool["content"].startswith("<image>\n")
    assert len(sample.images) == len(rec.get("images") or [rec["image"]]) + 1  # the case's pictures, then the overlay's stand-in


def test_shared_prefix_forward_equals_the_plain_forward(parts):
    from vlm.train.dataset import PixelCache, collate
    from vlm.train.stages import SharedPrefixLoss, shared_prefix_length

    data, model = parts
    samples = [_sample(parts, "ift", i)[2] for i in range(4)]
    for s in samples:
        s.images = [data / p for p in s.images]
    batch = collate(samples, PixelCache(model.vision_tower), model.tokenizer.pad_token_id)
    prefix = shared_prefix_length(batch["input_ids"], batch["labels"], model.image_token_index)
    assert prefix > 20  # system prompt and tool list
    loss = SharedPrefixLoss(model.float())
    with torch.no_grad():
        assert float(loss(**batch, prefix_length=prefix)) == pytest.approx(float(loss(**batch, prefix_length=0)), rel=1e-4)


def test_length_chunks_give_the_whole_batch_loss_with_less_padding(parts):
    """A batch split into length-sorted pieces, each loss weighted by its share of scored tokens, adds up
    to the whole batch's loss; the pieces pad fewer tokens."""
    from vlm.train.dataset import PixelCache, collate
    from vlm.train.stages import SharedPrefixLoss, _label_count, length_chunks, shared_prefix_length

    data, model = parts
    samples = [_sample(parts, "medical-ift", i)[2] for i in range(3)] + [_sample(parts, "ift", i)[2] for i in range(5)]
    for s in samples:
        s.images = [data / p for p in s.images]
    chunks = length_chunks(samples, 3, chunk_cost=16)
    assert sorted(id(s) for c in chunks for s in c) == sorted(id(s) for s in samples) and 1 < len(chunks) <= 3
    padded = sum(len(c) * max(len(s.input_ids) for s in c) for c in chunks)
    assert padded < len(samples) * max(len(s.input_ids) for s in samples)
    pixels, pad = PixelCache(model.vision_tower), model.tokenizer.pad_token_id
    loss = SharedPrefixLoss(model.float())

    def run(batch_samples):
        b = collate(batch_samples, pixels, pad)
        return loss(**b, prefix_length=shared_prefix_length(b["input_ids"], b["labels"], model.image_token_index))

    total = sum(_label_count(s.labels) for s in samples)
    with torch.no_grad():
        whole = float(run(samples))
        pieces = sum(float(run(c)) * sum(_label_count(s.labels) for s in c) / total for c in chunks)
    assert pieces == pytest.approx(whole, rel=1e-4)
    assert len(length_chunks(samples, 1)) == 1


def test_measurement_copies_redraw_values_consistently(parts):
    """Copies re-draw each mL / mm value of the tool turn and the assistant quotes the new one; counts stay."""
    import re

    import numpy as np

    from data.instructions.augment import resample_measurements
    from vlm.agent import AGENT_SYSTEM_PROMPT
    from vlm.train.build import expert_tool_schemas
    from vlm.train.dataset import ConversationDataset

    data, model = parts
    path = data / "medical-ift_train.json"
    records = json.loads(path.read_text())
    rec = next(r for r in records if any(t["from"] == "tool" and " mL" in t["value"] for t in r["conversations"]))
    copy = resample_measurements(rec, np.random.default_rng(1))
    measured = re.compile(r"(\d+\.\d) (?:mL|mm)")
    old_tool = [t["value"] for t in rec["conversations"] if t["from"] == "tool"]
    new_tool = [t["value"] for t in copy["conversations"] if t["from"] == "tool"]
    nonzero = [v for v in measured.findall(" ".join(old_tool)) if float(v) > 0]
    assert nonzero and not set(nonzero) & set(measured.findall(" ".join(new_tool)))
    assert re.findall(r"count: \d+", " ".join(old_tool)) == re.findall(r"count: \d+", " ".join(new_tool))
    new_values = set(measured.findall(" ".join(new_tool)))
    for turn in copy["conversations"]:
        if turn["from"] == "gpt":
            assert set(measured.findall(turn["value"])) <= new_values
    assert rec["conversations"][0] == copy["conversations"][0]  # the question is untouched
    assert resample_measurements({"conversations": [{"from": "human", "value": "liver 12.0 mL?"}]}, np.random.default_rng(0)) is None

    kw = dict(system_prompt=AGENT_SYSTEM_PROMPT, tools=expert_tool_schemas(), image_token_index=model.image_token_index,
              tokens_per_image=model.tokens_per_image, max_length=10_000)
    plain = ConversationDataset(path, model.tokenizer, **kw)
    more = ConversationDataset(path, model.tokenizer, measurement_copies=2, **kw)
    with_values = sum(1 for r in records if any(t["from"] == "tool" and any(float(v) > 0 for v in measured.findall(t["value"]))
                                                for t in r["conversations"]))
    assert len(more) == len(plain) + 2 * with_values


def test_leave_out_skips_the_named_image_kinds(parts):
    from vlm.agent import AGENT_SYSTEM_PROMPT
    from vlm.train.build import expert_tool_schemas
    from vlm.train.dataset import ConversationDataset

    data, model = parts
    path = data / "align_train.json"
    kinds = [r["meta"]["kind"] for r in json.loads(path.read_text())]
    kw = dict(system_prompt=AGENT_SYSTEM_PROMPT, tools=expert_tool_schemas(), image_token_index=model.image_token_index,
              tokens_per_image=model.tokens_per_image, max_length=10_000)
    assert "cxr" in kinds and len(set(kinds)) > 1
    kept = ConversationDataset(path, model.tokenizer, leave_out=("cxr",), **kw)
    assert len(kept) == sum(k != "cxr" for k in kinds)
    assert not any("cxr_" in str(p) for s in kept.samples for p in s.images)


def test_organ_conversations_are_added_to_medical_ift_training_data(tmp_path):
    import json

    from data.phantoms.labels import CT_LABELS, CT_ORGANS
    from vlm.train.build import TrainError, add_organ_conversations

    with pytest.raises(TrainError, match="medical-ift_train.json"):
        add_organ_conversations(tmp_path, 4)
    (tmp_path / "images").mkdir()
    base = [{"id": "medical-ift-ct-1", "conversations": [], "meta": {"tool_calls": []}}]
    (tmp_path / "medical-ift_train.json").write_text(json.dumps(base))
    n = add_organ_conversations(tmp_path, 16, seed=0)
    records = json.loads((tmp_path / "medical-ift_train.json").read_text())
    assert n >= 1 and len(records) == 1 + n and records[0] == base[0]
    organs = {CT_LABELS[v] for v in CT_ORGANS}
    for r in records[1:]:
        (call,) = r["meta"]["tool_calls"]
        assert call["name"] == "ct_segmentation" and call["arguments"]["targets"] in organs
        assert (tmp_path / r["image"]).is_file()
        assert call["arguments"]["targets"] in r["conversations"][0]["value"].lower()  # the question names the organ
    assert not (tmp_path / ".organ_conversations").exists()
