"""Tool-call arguments kept on the experts' JSON-schema choices narrowed to the question (``ToolCallConstraint``):
the same tokens banned as the character-by-character rule on the shipped model's tokenizer, failures kept for the
turn's flag, and the agent with the shipped model unable to call for what the question did not ask."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import vlm.generate as vlm_generate
from data.phantoms.ct import generate_ct
from experts.base import Expert, ExpertResult, Measurement
from experts.ct_segmentation import CTSegmentationExpert
from experts.registry import ExpertRegistry
from vlm.agent import Agent
from vlm.backends.base import GenerationConfig
from vlm.constraints import ToolCallConstraint, call_choices, token_texts
from vlm.conversation import Conversation

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default"
OFFERED = {"ct_segmentation": {"targets": ("liver", "liver tumor")}, "cxr_classification": {}}
CALL_TEXTS = [
    '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call> The liver',
    '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": ["liver", "liver tumor"]}}</tool_call>',
    '<tool_call>{"name": "cxr_classification", "arguments": {}}</tool_call><tool_call>{"arguments": {"targets": "liv',
    '<tool_call> {"name":"ct_segmentation","arguments":{"note": "a \\"quoted\\" word", "targets" : [ "liver" ] } }',
    'Let me look. <tool_call>{"name": "ct_segmentation", "parameters": {"targets": "liver tu',
]


class LiverCT(Expert):
    """The CT expert's schema (its real ``targets`` choices) without running the network: records the arguments."""

    name = "ct_segmentation"
    description = "CT organ and lesion segmentation with volumes in mL."
    modalities = ("CT",)
    parameters = CTSegmentationExpert.parameters

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, measurements=[Measurement("liver", "volume", 1523.4, "mL")], summary="Liver 1523.4 mL.")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_MODEL / "llm")


def _banned(processor, tok, text: str) -> set[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row = processor(torch.tensor([ids]), torch.zeros(1, len(tok)))[0]
    return set(torch.nonzero(row == -float("inf")).flatten().tolist())


def test_after_targets_only_tokens_spelling_the_liver_are_kept(tok):
    c = ToolCallConstraint(tok, call_choices({"ct_segmentation": CTSegmentationExpert.parameters}, {"ct_segmentation": {"targets": "liver"}}))
    pieces = token_texts(tok)
    kept = set(range(len(tok))) - _banned(c, tok, '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "')
    assert kept and all("liver".startswith(pieces[i]) and pieces[i] for i in kept)
    assert tok.convert_tokens_to_ids("liver") in kept
    closing = set(range(len(tok))) - _banned(c, tok, '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver')
    assert closing and all(pieces[i].startswith('"') for i in closing)  # the value is complete: only its close
    assert not c.failures


def test_the_tool_call_constraint_bans_exactly_what_the_character_rule_bans(tok):
    """Every token followed through the call's JSON one character at a time (the slow rule) against the constraint's
    prefix walks and candidate sets, at every step of calls written in several shapes."""
    pieces, masked = token_texts(tok), 0
    for text in CALL_TEXTS:
        c = ToolCallConstraint(tok, OFFERED)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for n in range(len(ids) + 1):
            decoded = tok.decode(ids[:n], skip_special_tokens=True)
            banned = _banned(c, tok, decoded) if n else set()
            at = decoded.rfind("<tool_call>")
            expected = set()
            if at >= 0 and decoded.rfind("</tool_call>") < at:
                state = ToolCallConstraint(tok, OFFERED).state_of(decoded[at + len("<tool_call>"):])
                if state is not None and state.mode != "end":
                    expected = {i for i, p in enumerate(pieces) if c._fold(state, p) is None}
                    expected = expected if len(expected) < len(pieces) else set()
            assert banned == expected, (text, decoded)
            masked += bool(banned)
        assert not c.failures, c.failures
    assert masked >= 40  # the texts do reach the constrained states


class _JsonTokens:
    """A vocabulary of single characters and long JSON tokens that close a key and open (or misopen) its value in one
    token, as large vocabularies have; decodes by joining."""

    LONG = ('": 5', '": {', '": "', '": "li', '", "targets": "les', '", "targets": "liv', '"liver"', '"lesions"', ' ["', '"]', '"]}',
            '"}}', ": 5", ":{", ': "li', "liver", "lesions", "liver tumor", " tumor", "ct_segmentation", "cxr", '{"name": "', '{"name": "cx',
            '":[', '":[5', '": [ "liv', "targets", '"targets": "', '\\"', ', "arguments": {"targets": "les', '"name": "ct')

    def __init__(self) -> None:
        self.pieces = [chr(c) for c in range(32, 127)] + ["\n"] + list(self.LONG)

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids, skip_special_tokens=False) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_on_a_vocabulary_of_long_json_tokens_the_constraint_bans_exactly_what_the_character_rule_bans():
    vocab = _JsonTokens()
    masked = 0
    for text in CALL_TEXTS:
        c = ToolCallConstraint(vocab, OFFERED)
        ids = [vocab.pieces.index(ch) for ch in text]
        for n in range(1, len(ids) + 1):
            row = c(torch.tensor([ids[:n]]), torch.zeros(1, len(vocab)))[0]
            banned = set(torch.nonzero(row == -float("inf")).flatten().tolist())
            decoded = text[:n]
            at = decoded.rfind("<tool_call>")
            expected = set()
            if at >= 0 and decoded.rfind("</tool_call>") < at:
                state = ToolCallConstraint(vocab, OFFERED).state_of(decoded[at + len("<tool_call>"):])
                if state is not None and state.mode != "end":
                    expected = {i for i, p in enumerate(vocab.pieces) if c._fold(state, p) is None}
                    expected = expected if len(expected) < len(vocab) else set()
            assert banned == expected, decoded
            masked += bool(banned & {vocab.pieces.index(t) for t in ('": 5', ": 5", '", "targets": "les', '": {')})
        assert not c.failures, c.failures
    assert masked >= 5  # the long tokens were stopped where they would misopen a value


def test_a_call_already_holding_a_value_outside_the_choices_flags_the_turn_and_goes_on(tok):
    c = ToolCallConstraint(tok, OFFERED)
    assert _banned(c, tok, '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "lesions", ') == set()
    assert len(c.failures) == 1 and "tool-call constraint failed" in c.failures[0] and "ConstraintError" in c.failures[0]


class _Recording:
    """The shipped model's backend, recording each round's text and constraints."""

    def __init__(self, backend):
        self.backend, self.info, self.texts, self.constraints = backend, backend.info, [], []

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        self.constraints.append(constraints)
        self.texts.append("")
        for piece in self.backend.stream_chat(messages, images, tools, config, cache_key, constraints=constraints):
            self.texts[-1] += piece
            yield piece


class _PushLesions(LogitsProcessor):
    """Pushes the first round towards a call for lesions, token by token, while the model follows it."""

    def __init__(self, script: list[int]) -> None:
        self.script = script

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1]
        if step < len(self.script) and input_ids[0].tolist() == self.script[:step]:
            scores[:, self.script[step]] += 1e4
        return scores


@pytest.mark.parametrize("constrained", [True, False])
def test_asked_about_the_liver_the_shipped_model_cannot_call_for_lesions(constrained, monkeypatch):
    from vlm.backends.hf_vlm import HFVLMBackend
    from vlm.model import load_model

    backend = _Recording(HFVLMBackend(load_model(DEFAULT_MODEL)))
    tokenizer = backend.backend.tokenizer
    script = tokenizer('<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "lesions"}}</tool_call>',
                       add_special_tokens=False)["input_ids"]
    real, rounds = vlm_generate.generation_kwargs, []

    def pushed(*args, **kwargs):
        out = real(*args, **kwargs)
        rounds.append(1)
        push = [_PushLesions(script)] if len(rounds) == 1 else []
        return {**out, "logits_processor": LogitsProcessorList([*push, *(out.get("logits_processor") or [])])}

    monkeypatch.setattr(vlm_generate, "generation_kwargs", pushed)
    registry = ExpertRegistry()
    registry.register(LiverCT.name, LiverCT)
    ct, _, _ = generate_ct(0)
    conversation = Conversation(volumes={"CT": ct}, images=[np.zeros((16, 16), np.uint8)])
    agent = Agent(backend, registry, max_rounds=1, generation=GenerationConfig(max_new_tokens=40), constrain_references=constrained,
                  plan_calls=False, cite=False)
    turn = agent.run_turn(conversation, "What is the liver volume?")
    written = re.findall(r'"targets": "([^"]*)"', backend.texts[0])
    if not constrained:  # the push alone makes the model ask for lesions: the test can tell
        assert written == ["lesions"]
        return
    assert backend.constraints[0].call_arguments["ct_segmentation"] == {"targets": ("liver",)}
    asked = backend.constraints[0].asked  # the parsed question, not its words
    assert asked is not None and (asked.form, asked.family, asked.terms) == ("wh", "volume", ("liver",)) and not backend.constraints[0].failures
    assert written == ["liver"]
    call = turn.tool_calls[0]
    assert call.arguments == {"targets": "liver"} and call.repairs == []  # the model's own call, nothing repaired
