"""Flextron's elastic LM: importance order, permutation, nested widths sharing one set of weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.compress.conftest import patterned_ids, tiny_llama
from vlm.compress.calibration import pack_tokens
from vlm.compress.elastic import (
    ElasticConfig,
    ElasticError,
    ElasticSpace,
    LayerWidth,
    activation_importance,
    apply_ordering,
    count_params,
    importance_ordering,
    make_elastic,
    plan_applied,
    set_plan,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default"


def _ordered(lm, ids):
    space = ElasticSpace(lm)
    apply_ordering(lm, importance_ordering(activation_importance(lm, ids), space))
    return space


@torch.no_grad()
def test_permuting_the_shipped_model_into_importance_order_leaves_its_answer_logits_unchanged():
    from vlm.model import load_model

    model = load_model(DEFAULT_MODEL).eval()
    tok = model.tokenizer
    messages = [{"role": "system", "content": model.config.system_prompt},
                {"role": "user", "content": "<image>\nIs there a liver lesion?"}]
    ids = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    input_ids = torch.tensor([model.expand_image_tokens(tok(ids, add_special_tokens=False)["input_ids"])])
    size = model.vision_tower.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = model(input_ids=input_ids, pixel_values=pixels).logits
    answer = [{"role": "assistant", "content": "<tool_call>{\"name\": \"ct_segmentation\", \"arguments\": {\"targets\": \"lesions\"}}</tool_call>"}]
    chat = tok.apply_chat_template(messages[1:] + answer, tokenize=False)
    calib = pack_tokens(tok, [chat.replace("<image>", "")] * 8, 32)  # calibration in the model's chat format
    importance = activation_importance(model.llm, calib)
    ordering = importance_ordering(importance, ElasticSpace(model.llm))
    assert ordering.heads != [list(range(4))] * 4 or ordering.mlp != [list(range(640))] * 4  # something moved
    apply_ordering(model.llm, ordering)
    after = model(input_ids=input_ids, pixel_values=pixels).logits
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    again = activation_importance(model.llm, calib)  # the most important units now come first
    for mlp in again.mlp:
        assert bool((mlp[:-1] >= mlp[1:] * (1 - 1e-6)).all())


@torch.no_grad()
def test_grouped_query_heads_move_with_their_key_value_group():
    lm = tiny_llama()  # 4 query heads sharing 2 KV heads
    ids = patterned_ids(8, 16)
    before = lm(input_ids=ids).logits
    space = ElasticSpace(lm)
    ordering = importance_ordering(activation_importance(lm, ids), space)
    for order in ordering.heads:
        assert {order[0] // 2, order[1] // 2} == {order[0] // 2} and {order[2] // 2, order[3] // 2} == {order[2] // 2}
    apply_ordering(lm, ordering)
    assert torch.allclose(lm(input_ids=ids).logits, before, atol=1e-5, rtol=0)
    assert space.head_levels == [2, 4]  # whole groups only: 25 % of 2 groups rounds up to one group


@torch.no_grad()
def test_an_ordering_that_splits_a_key_value_group_is_refused():
    lm = tiny_llama()
    space = ElasticSpace(lm)
    bad = importance_ordering(activation_importance(lm, patterned_ids(4, 16)), space)
    bad.heads[0] = [0, 2, 1, 3]
    with pytest.raises(ElasticError, match="splits a KV group"):
        apply_ordering(lm, bad)


@torch.no_grad()
def test_the_full_width_of_the_elastic_model_is_the_original_model():
    lm = tiny_llama()
    ids = patterned_ids(4, 16)
    before = lm(input_ids=ids).logits
    make_elastic(lm)
    assert torch.equal(lm(input_ids=ids).logits, before)
    assert set(lm.state_dict()) == set(tiny_llama().state_dict())  # saves and loads as the plain LM


@torch.no_grad()
def test_a_smaller_width_is_the_weight_prefix_and_has_the_parameter_count_of_a_model_that_size():
    lm = tiny_llama(layers=2, hidden=64)
    ids = patterned_ids(4, 16)
    _ordered(lm, ids)
    make_elastic(lm)
    space = ElasticSpace(lm, ElasticConfig())
    plan = space.uniform(2, 64)  # half the heads (one KV group), half the MLP
    small_cfg = LlamaConfig(**{**lm.config.to_dict(), "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                               "head_dim": 16})
    plain = LlamaForCausalLM(small_cfg).eval()
    state = {}
    for name, tensor in lm.state_dict().items():  # slice each weight to the prefix a 2-head / 64-neuron LM holds
        target = plain.state_dict()[name]
        state[name] = tensor[tuple(slice(0, s) for s in target.shape)]
    plain.load_state_dict(state)
    with plan_applied(lm, plan, space):
        sub = lm(input_ids=ids).logits
        assert count_params(lm, plan, space) == sum(p.numel() for p in plain.parameters())
    assert torch.allclose(sub, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(sub, lm(input_ids=ids).logits, atol=1e-3)  # back to full width after the block
    assert count_params(lm, plan, space) < count_params(lm, None, space)


def test_mixed_widths_per_layer_and_unknown_widths():
    lm = make_elastic(tiny_llama(layers=2))
    space = ElasticSpace(lm)
    set_plan(lm, [LayerWidth(2, 32), LayerWidth(4, 128)], space)
    assert lm(input_ids=patterned_ids(2, 8)).logits.shape == (2, 8, 128)
    with pytest.raises(ElasticError, match="not a level"):
        set_plan(lm, [LayerWidth(3, 32), LayerWidth(4, 128)], space)
    with pytest.raises(ElasticError, match="include 1.0"):
        ElasticConfig(head_fractions=(0.5,))
