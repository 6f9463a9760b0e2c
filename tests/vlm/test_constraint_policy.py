"""The decoding policy (``vlm.constraints.policy``), one test per rule in a clinician's words: each test builds the
processors the way the agent does (``DecodingConstraints``) and checks what they allow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm.constraints import (
    DecodingConstraints,
    ReferenceConstraint,
    SideConstraint,
    ToolCallConstraint,
    call_choices,
    token_texts,
)
from vlm.constraints.policy import CALL_RULES, REFERENCE_RULES, SIDE_RULES

DEFAULT_LLM = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default" / "llm"
CHEST = ("cardiomegaly?", "pleural effusion?", "nodule?", "pneumothorax?", "consolidation?")
BRAIN = ("tumor", "tumor?", "tumor volume", "enhancing tumor?", "necrosis?", "edema?", "edema volume", "left hemisphere?", "hemisphere")
CT_TARGETS = ("everything", "organs", "lesions", "liver tumor", "kidney cyst", "liver", "spleen", "left kidney", "right kidney")
CT_SCHEMA = {"type": "object", "properties": {"targets": {"anyOf": [
    {"type": "string", "enum": list(CT_TARGETS)}, {"type": "array", "items": {"type": "string", "enum": list(CT_TARGETS)}}]}}}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_LLM)


def _reference(tok, keys, question="", answer_keys=(), answer_form="") -> ReferenceConstraint:
    (processor,) = DecodingConstraints(references=tuple(keys), question=question, answer_keys=tuple(answer_keys),
                                       answer_form=answer_form).processors(tok)
    assert isinstance(processor, ReferenceConstraint)
    return processor


def _kept_after(processor, tok, text: str) -> list[str]:
    """The texts of the tokens the processor leaves open after ``text``."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row = processor(torch.tensor([ids]), torch.zeros(1, len(tok)))[0]
    return [token_texts(tok)[i] for i in torch.nonzero(row == 0).flatten().tolist()]


def _stopped(processor, tok, start: str, word: str) -> bool:
    """Whether some token of ``word`` is banned after the ones before it, written after ``start``."""
    before = len(tok(start, add_special_tokens=False)["input_ids"])
    spelled = tok(start + word, add_special_tokens=False)["input_ids"]
    return any(processor(torch.tensor([spelled[:n]]), torch.zeros(1, len(tok)))[0, spelled[n]] == -float("inf")
               for n in range(before, len(spelled)))


# ---- references ------------------------------------------------------------------------------------------------
def test_asked_how_large_the_liver_is_the_answer_opens_with_the_liver_volume_the_agent_chose(tok):
    keys = ("liver volume", "liver", "spleen volume", "liver tumor?")
    chosen = _reference(tok, keys, "How large is the liver?", answer_keys=("liver volume",), answer_form="wh")
    assert chosen.allowed("") == {"liver volume"}
    assert _reference(tok, keys, "How large is the liver?", answer_form="wh").allowed("") == {"liver", "liver volume"}


def test_asked_whether_this_slice_shows_a_kidney_cyst_the_answer_opens_with_the_slice_field(tok):
    keys = ("kidney cyst?", "kidney cyst in this slice?", "liver tumor?", "liver tumor in this slice?")
    on_slice = _reference(tok, keys, "Is a kidney cyst shown in this slice?", answer_form="yes_no")
    assert on_slice.allowed("") == {"kidney cyst in this slice?"}
    assert _reference(tok, keys, "Is there a kidney cyst?", answer_form="yes_no").allowed("") == {"kidney cyst?"}


def test_a_yes_no_question_about_a_pneumothorax_opens_its_answer_with_the_pneumothorax_field(tok):
    # "collapsed lung" is the lexicon's name for a pneumothorax
    assert _reference(tok, CHEST, "Is there a collapsed lung?", answer_form="yes_no").allowed("") == {"pneumothorax?"}
    assert _reference(tok, CHEST, "PTX?", answer_form="yes_no").allowed("") == {"pneumothorax?"}  # the abbreviation
    # naming no finding, any finding's yes / no field may answer
    assert _reference(tok, CHEST, "Is anything wrong?", answer_form="yes_no").allowed("") == set(CHEST)


def test_asked_which_side_of_the_brain_holds_the_tumour_the_answer_opens_with_the_hemisphere(tok):
    which = _reference(tok, BRAIN, "Which side of the brain holds the tumor?", answer_form="wh")
    assert which.allowed("") == {"hemisphere"}
    assert _reference(tok, BRAIN, "How big is the tumor?", answer_form="wh").allowed("") == {"tumor", "tumor volume"}


def test_asked_how_large_the_edema_is_the_answer_never_opens_with_the_edema_yes_no_field(tok):
    keys = ("edema", "edema?", "edema volume", "tumor volume")
    assert _reference(tok, keys, "How large is the edema?", answer_form="wh").allowed("") == {"edema", "edema volume"}
    assert _reference(tok, keys, "Describe the edema.", answer_form="command").allowed("") == {"edema", "edema?", "edema volume"}
    # naming nothing the results hold: any field but a yes / no one
    assert _reference(tok, BRAIN, "What do you see?", answer_form="wh").allowed("") == {"tumor", "tumor volume", "edema volume", "hemisphere"}


def test_a_reference_names_the_structure_of_its_own_sentence_and_is_free_after_an_organ_no_result_measured(tok):
    c = _reference(tok, ("left kidney volume", "right kidney volume", "liver volume"), "What are the kidney volumes?", answer_form="wh")
    assert c.allowed("The left kidney is 150 mL. The right kidney volume is ") == {"right kidney volume"}
    assert c.allowed("The spleen volume is ") == set()  # no result measured it: the agent shows "(not in the expert result)"
    kept = _kept_after(c, tok, "The right kidney volume is [[")
    assert kept and all("right kidney volume]]".startswith(p.lower()) for p in kept)


def test_asked_left_or_right_hemisphere_the_answer_does_not_open_with_one_sided_field(tok):
    keys = ("hemisphere", "left hemisphere", "right hemisphere")
    assert _reference(tok, keys, "Is the tumor in the left or right hemisphere?", answer_form="either_or").allowed("") == {"hemisphere"}


def test_the_parsed_question_form_decides_a_yes_no_answer_not_the_wording(tok):
    # "Pneumothorax?" has no auxiliary verb: only the parsed form says it asks yes or no
    assert _reference(tok, CHEST, "Pneumothorax?", answer_form="yes_no").allowed("") == {"pneumothorax?"}
    assert _reference(tok, CHEST, "Pneumothorax?").allowed("") == set()  # without the form the wording is read, as before
    # and a question worded with an auxiliary is not read as yes / no when the parse says otherwise
    assert _reference(tok, BRAIN, "Is it the left or the right hemisphere?", answer_form="either_or").allowed("") != {"left hemisphere?"}


# ---- sides ------------------------------------------------------------------------------------------------------
def test_asked_about_the_left_kidney_the_call_stops_at_the_ri_of_right(tok):
    (guard,) = DecodingConstraints(call_side="left").processors(tok)
    assert isinstance(guard, SideConstraint) and not guard.in_answer
    start = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "'
    assert _stopped(guard, tok, start, "right kidney") and _stopped(guard, tok, start, "Right")
    assert not _stopped(guard, tok, start, "left kidney")
    assert not _stopped(guard, tok, "", "The right kidney was not asked about.")  # the answer is not the call's


def test_after_measuring_the_left_kidney_the_answer_cannot_write_right_but_may_write_rib(tok):
    (guard,) = DecodingConstraints(answer_side="left").processors(tok)
    assert isinstance(guard, SideConstraint) and guard.in_answer
    assert _stopped(guard, tok, "The ", "right kidney is normal.")
    assert not _stopped(guard, tok, "The ", "ribs and the left kidney are normal.")


# ---- tool-call arguments ----------------------------------------------------------------------------------------
def test_on_a_ct_a_call_can_only_name_the_ct_expert(tok):
    (guard,) = DecodingConstraints(call_arguments=call_choices({"ct_segmentation": CT_SCHEMA})).processors(tok)
    assert isinstance(guard, ToolCallConstraint)
    assert _stopped(guard, tok, '<tool_call>{"name": "', "cxr_classification")
    assert _stopped(guard, tok, '<tool_call>{"name": "', "mri_brain_tumor")
    assert not _stopped(guard, tok, '<tool_call>{"name": "', 'ct_segmentation", "arguments": {}}</tool_call>')


def test_asked_about_the_liver_a_segmentation_call_can_only_target_the_liver(tok):
    offered = call_choices({"ct_segmentation": CT_SCHEMA}, {"ct_segmentation": {"targets": "liver"}})
    assert offered == {"ct_segmentation": {"targets": ("liver",)}}
    (guard,) = DecodingConstraints(call_arguments=offered).processors(tok)
    start = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": '
    assert _stopped(guard, tok, start, '"lesions"') and _stopped(guard, tok, start, '["liver", "spleen"]')
    assert not _stopped(guard, tok, start, '"liver"}}</tool_call>') and not _stopped(guard, tok, start, '["liver"]}}')
    # a question naming nothing (a report) leaves every target of the schema
    assert call_choices({"ct_segmentation": CT_SCHEMA}, {"ct_segmentation": {}}) == {"ct_segmentation": {"targets": CT_TARGETS}}


RULE_TESTS = {
    REFERENCE_RULES[0].name: test_asked_how_large_the_liver_is_the_answer_opens_with_the_liver_volume_the_agent_chose,
    REFERENCE_RULES[1].name: test_asked_whether_this_slice_shows_a_kidney_cyst_the_answer_opens_with_the_slice_field,
    REFERENCE_RULES[2].name: test_a_yes_no_question_about_a_pneumothorax_opens_its_answer_with_the_pneumothorax_field,
    REFERENCE_RULES[3].name: test_asked_which_side_of_the_brain_holds_the_tumour_the_answer_opens_with_the_hemisphere,
    REFERENCE_RULES[4].name: test_asked_how_large_the_edema_is_the_answer_never_opens_with_the_edema_yes_no_field,
    REFERENCE_RULES[5].name: test_a_reference_names_the_structure_of_its_own_sentence_and_is_free_after_an_organ_no_result_measured,
    SIDE_RULES[0].name: test_asked_about_the_left_kidney_the_call_stops_at_the_ri_of_right,
    SIDE_RULES[1].name: test_after_measuring_the_left_kidney_the_answer_cannot_write_right_but_may_write_rib,
    CALL_RULES[0].name: test_on_a_ct_a_call_can_only_name_the_ct_expert,
    CALL_RULES[1].name: test_asked_about_the_liver_a_segmentation_call_can_only_target_the_liver,
}


def test_every_rule_of_the_policy_has_its_test():
    rules = [r.name for table in (REFERENCE_RULES, SIDE_RULES, CALL_RULES) for r in table]
    assert len(rules) == len(set(rules)) and set(RULE_TESTS) == set(rules)
