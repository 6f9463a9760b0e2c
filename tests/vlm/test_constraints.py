"""Decoding constraints (``vlm.constraints``): the same tokens banned as the plain per-vocabulary rule on the
shipped model's tokenizer, the policies in a clinician's words, failures kept for the turn's flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from data.tool_text import REF_CLOSE, REF_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.backends.base import GenerationConfig
from vlm.constraints import (
    OTHER_SIDE,
    AskedFacts,
    ReferenceConstraint,
    RunningText,
    SideConstraint,
    token_texts,
)
from vlm.constraints import DecodingConstraints
from vlm.generate import generation_kwargs
from vlm.intent import parse_question

DEFAULT_LLM = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default" / "llm"
KEYS = ["left kidney volume", "left kidney", "right kidney volume", "right kidney", "liver volume", "liver", "liver tumor count",
        "liver tumor", "edema?", "edema volume", "hemisphere", "left hemisphere"]
REFERENCE_TEXTS = [
    "The left kidney volume is [[left kidney volume]].",
    "The liver volume is [[liver vol",
    "Liver tumors: [[liver tumor count]] and [[liver tumor]];",
    "[[edema?]] The edema volume is [[edema volume]]",
    "It is [[",
    '<tool_call>{"name": "ct", "arguments": {"targets": ["liver"]}}</tool_call> The liver [[liver]',
    "The liver [[ liver  volume ]], left kidney [[Left Kidney]]",
    "The liver volume is [[liver volume]][[liver",
    "Left kidney: [[left kidney volume]]; right kidney [[right",
    "Sizes [ [[left hemisphere]] [[[x",
    "The hemisphere: [[hemisphere?]] [[spleen]]",
]
SIDE_TEXTS = [
    '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "right kidney"}}</tool_call> The right kidney is normal.\nRight',
    '<tool_call>{"arguments": {"targets": "left lung", "side": "ri',
    "The righ\nt side; bright, rights, right_x, 2righ and Left.",
    "Left or right? LEFT. The le\nft kidney is [[left kidney volume]].",
    '<tool_call>{"name": "x"}</tool_call><tool_call>{"targets": "lef',
]


@pytest.fixture(scope="module")
def default_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_LLM)


def _plain_reference_banned(c: ReferenceConstraint, pieces: list[str], text: str, vocab: int) -> set[int]:
    """The rule tested on every vocabulary entry, as the constraint first did it (the slow reference)."""
    if text.rfind(TOOL_CALL_OPEN) > text.rfind(TOOL_CALL_CLOSE):
        return set()
    at = text.rfind(REF_OPEN)
    if at >= 0 and text.find(REF_CLOSE, at) < 0:
        keys = c.allowed(text[:at])
        partial = text[at + 2:]
        banned = [i for i in range(min(len(pieces), vocab)) if not c.ok(partial + pieces[i], keys)] if keys else []
    else:
        banned = []
        for i in [i for i, t in enumerate(pieces) if "[" in t]:
            cand = text[-1:] + pieces[i]
            j = cand.find(REF_OPEN)
            if j < 0 or j + 2 == len(cand):
                continue
            keys = c.allowed(text + cand[1:j])
            if keys and not c.ok(cand[j + 2:], keys):
                banned.append(i)
    return set(banned) if banned and len(banned) < vocab else set()


def _plain_side_banned(side: str, in_answer: bool, pieces: list[str], text: str, vocab: int) -> set[int]:
    """The side rule tested on every vocabulary entry (the slow reference)."""
    other = OTHER_SIDE[side]
    min_prefix = len(other) - 1 if in_answer else 2

    def spells(t: str) -> bool:
        low = t.lower()
        if re.search(r"\b" + other + r"\b", low):
            return True
        tail = re.search(r"(?<![a-z])([a-z]+)$", low)
        return bool(tail) and len(tail.group(1)) >= min_prefix and other.startswith(tail.group(1))

    at = text.rfind(TOOL_CALL_OPEN)
    in_call = at >= 0 and text.rfind(TOOL_CALL_CLOSE) < at
    if in_call == in_answer:
        return set()
    close = text.rfind(TOOL_CALL_CLOSE)
    span = text[at + len(TOOL_CALL_OPEN):] if in_call else (text[close + len(TOOL_CALL_CLOSE):] if close >= 0 else text)
    banned = [i for i in range(min(len(pieces), vocab)) if spells(span + pieces[i])]
    return set(banned) if banned and len(banned) < vocab else set()


def _banned_step_by_step(processor, tokenizer, text: str, vocab: int):
    """Feed ``text``'s tokens one more at a time (as ``generate`` does); yield (decoded text, banned ids)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for n in range(len(ids) + 1):
        scores = processor(torch.tensor([ids[:n]], dtype=torch.long), torch.zeros(1, vocab))[0]
        yield tokenizer.decode(ids[:n], skip_special_tokens=True), set(torch.nonzero(scores == -float("inf")).flatten().tolist())


def _asked(question: str, modality: str) -> AskedFacts:
    """What ``question`` asks of a study of ``modality``, parsed once as the agent parses it."""
    return AskedFacts.of(parse_question(question, (modality,)))


@pytest.mark.parametrize("question", ["", "Could you tell me: do you see edema?", "Which side of the brain holds the tumor?"])
def test_reference_constraint_bans_exactly_what_the_per_token_rule_bans(default_tokenizer, question):
    pieces, vocab = token_texts(default_tokenizer), len(default_tokenizer) + 7  # model vocabularies are often padded
    masked_steps = 0
    asked = _asked(question, "MR") if question else None
    for text in REFERENCE_TEXTS:
        c = ReferenceConstraint(default_tokenizer, KEYS, asked=asked)
        for decoded, banned in _banned_step_by_step(c, default_tokenizer, text, vocab):
            assert banned == _plain_reference_banned(c, pieces, decoded, vocab), (text, decoded)
            masked_steps += bool(banned)
        assert not c.failures
    assert masked_steps >= 20  # the texts do reach the masking states


@pytest.mark.parametrize(("side", "in_answer"), [("left", False), ("left", True), ("right", False), ("right", True)])
def test_side_constraint_bans_exactly_what_the_per_token_rule_bans(default_tokenizer, side, in_answer):
    pieces, vocab = token_texts(default_tokenizer), len(default_tokenizer)
    masked_steps = 0
    for text in SIDE_TEXTS:
        c = SideConstraint(default_tokenizer, side, in_answer=in_answer)
        for decoded, banned in _banned_step_by_step(c, default_tokenizer, text, vocab):
            assert banned == _plain_side_banned(side, in_answer, pieces, decoded, vocab), (text, decoded)
            masked_steps += bool(banned)
        assert not c.failures
    assert masked_steps >= 10


def test_the_running_text_is_the_whole_decode_at_every_step(default_tokenizer):
    text = ("The lesion measures 23 mm × 14 mm (≈ 2.3 cm) in the left kidney — naïve café 🙂 ; it's fine . " * 3).strip()
    ids = default_tokenizer(text, add_special_tokens=False)["input_ids"]
    running = RunningText(default_tokenizer)
    for n in range(len(ids) + 1):
        assert running.update(ids[:n]) == default_tokenizer.decode(ids[:n], skip_special_tokens=True)
    assert running.anchor > 0  # most of the text was not decoded again
    assert running.update(ids[:5]) == default_tokenizer.decode(ids[:5], skip_special_tokens=True)  # a new sequence starts over


def test_asked_about_the_left_kidney_a_call_cannot_name_the_right_kidney(default_tokenizer):
    tok = default_tokenizer
    c = SideConstraint(tok, "left")
    start = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "'
    ids = tok(start, add_special_tokens=False)["input_ids"]

    def stopped(word: str) -> bool:  # some token of the word is banned after the ones before it
        spelled = tok(start + word, add_special_tokens=False)["input_ids"]
        return any(c(torch.tensor([spelled[:n]]), torch.zeros(1, len(tok)))[0, spelled[n]] == -float("inf") for n in range(len(ids), len(spelled)))

    assert all(stopped(w) for w in ("right", "right kidney", "Right kidney", "RIGHT"))
    assert not any(stopped(w) for w in ("left kidney", "Left kidney", "liver"))


def test_after_measuring_only_the_left_kidney_the_answer_cannot_name_the_right_one(default_tokenizer):
    tok = default_tokenizer
    c = SideConstraint(tok, "left", in_answer=True)
    ids = tok('<tool_call>{"name": "ct_segmentation"}</tool_call>The righ', add_special_tokens=False)["input_ids"]
    scores = c(torch.tensor([ids]), torch.zeros(1, len(tok)))[0]
    assert scores[tok.convert_tokens_to_ids("t")] == -float("inf")  # "right" cannot be finished
    ids = tok("The ri", add_special_tokens=False)["input_ids"]
    scores = c(torch.tensor([ids]), torch.zeros(1, len(tok)))[0]
    assert scores[tok.convert_tokens_to_ids("b")] == 0  # "rib…" is not a side
    assert scores[tok.convert_tokens_to_ids("ght")] == -float("inf")


def test_an_answer_opening_with_a_reference_names_the_field_the_agent_chose(default_tokenizer):
    tok = default_tokenizer
    keys = ["liver volume", "liver", "spleen volume", "liver tumor?"]
    # asked "How large is the liver?", the agent answers from the liver volume: "[[" opening the answer spells it
    asked = _asked("How large is the liver?", "CT")
    c = ReferenceConstraint(tok, keys, asked=asked, answer_keys=("Liver  Volume",))
    assert c.allowed("") == c.allowed(" ") == {"liver volume"}
    ids = tok("[[", add_special_tokens=False)["input_ids"]
    row = c(torch.tensor([ids]), torch.zeros(1, len(tok)))[0]
    kept = [token_texts(tok)[i] for i in torch.nonzero(row == 0).flatten().tolist()]
    assert kept and all("liver volume]]".startswith(p.lower()) for p in kept)
    # a reference after words of the answer still follows its own sentence
    assert c.allowed("The spleen volume is ") == {"spleen volume"}
    # the agent's choice names no field of the results: the question decides, as without it
    plain = ReferenceConstraint(tok, keys, asked=asked)
    assert ReferenceConstraint(tok, keys, asked=asked, answer_keys=("heart volume",)).allowed("") == plain.allowed("")
    assert plain.allowed("") == {"liver", "liver volume"}


def test_the_agent_s_answer_fields_reach_the_reference_constraint(default_tokenizer):
    constraints = DecodingConstraints(references=("liver volume", "spleen volume"), asked=_asked("How big is it?", "CT"),
                                      answer_keys=("spleen volume",))
    (processor,) = generation_kwargs(default_tokenizer, GenerationConfig(), constraints=constraints)["logits_processor"]
    assert isinstance(processor, ReferenceConstraint) and processor.allowed("") == {"spleen volume"}


def test_a_failing_constraint_flags_the_turn_and_the_answer_goes_on(default_tokenizer, monkeypatch, caplog):
    tok = default_tokenizer
    c = ReferenceConstraint(tok, KEYS)
    ids = torch.tensor([tok("The liver volume is [[", add_special_tokens=False)["input_ids"]])
    assert torch.any(c(ids, torch.zeros(1, len(tok))) == -float("inf")) and not c.failed

    def broken(*_):
        raise KeyError("liver volume")

    monkeypatch.setattr(c, "allowed", broken)
    scores = c(ids, torch.zeros(1, len(tok)))
    assert torch.all(scores == 0)  # this step was decoded unconstrained …
    assert c.failed and len(c.failures) == 1 and "KeyError" in c.failures[0]  # … and the turn can say so
    assert "reference constraint failed" in caplog.text


def test_constraints_of_one_generate_call_share_one_running_text_and_ban_as_they_would_alone(default_tokenizer):
    tok = default_tokenizer
    config = DecodingConstraints(references=tuple(KEYS), call_side="left", answer_side="left", asked=_asked("How big is the left kidney?", "CT"))
    together = list(generation_kwargs(tok, GenerationConfig(), constraints=config)["logits_processor"])
    alone = [ReferenceConstraint(tok, KEYS, asked=config.asked), SideConstraint(tok, "left"), SideConstraint(tok, "left", in_answer=True)]
    assert together[0]._texts is together[1]._texts is together[2]._texts
    ids = tok('<tool_call>{"targets": "right kidney"}</tool_call>The right kidney is [[right kidney volume]].', add_special_tokens=False)["input_ids"]
    for n in range(len(ids) + 1):
        step = torch.tensor([ids[:n]])
        joint, single = torch.zeros(1, len(tok)), torch.zeros(1, len(tok))
        for p in together:
            p(step, joint)
        for p in alone:
            p(step, single)
        assert torch.equal(joint, single), tok.decode(ids[:n])
