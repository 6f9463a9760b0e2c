"""The decoding policy (``vlm.constraints.policy``), one test per rule in a clinician's words: each test builds the
processors the way the agent does (``DecodingConstraints``) and checks what they allow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlm.constraints import (
    AskedFacts,
    DecodingConstraints,
    ReferenceConstraint,
    SideConstraint,
    ToolCallConstraint,
    call_choices,
    token_texts,
)
from vlm.constraints.policy import CALL_RULES, REFERENCE_RULES, SIDE_RULES
from vlm.intent import parse_question

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


def _reference(tok, keys, question=None, modality="CT", answer_keys=()) -> ReferenceConstraint:
    """The reference processor of a round, built as the agent builds it: the question parsed once for a study of
    ``modality`` (None: no question)."""
    asked = AskedFacts.of(parse_question(question, (modality,))) if question is not None else None
    (processor,) = DecodingConstraints(references=tuple(keys), asked=asked, answer_keys=tuple(answer_keys)).processors(tok)
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
    chosen = _reference(tok, keys, "How large is the liver?", answer_keys=("liver volume",))
    assert chosen.allowed("") == {"liver volume"}
    assert _reference(tok, keys, "How large is the liver?").allowed("") == {"liver", "liver volume"}


def test_asked_whether_this_slice_shows_a_kidney_cyst_the_answer_opens_with_the_slice_field(tok):
    keys = ("kidney cyst?", "kidney cyst in this slice?", "liver tumor?", "liver tumor in this slice?")
    on_slice = _reference(tok, keys, "Is a kidney cyst shown in this slice?")
    assert on_slice.allowed("") == {"kidney cyst in this slice?"}
    assert _reference(tok, keys, "Is there a kidney cyst?").allowed("") == {"kidney cyst?"}


def test_a_yes_no_question_about_a_pneumothorax_opens_its_answer_with_the_pneumothorax_field(tok):
    # "collapsed lung" is the lexicon's name for a pneumothorax
    assert _reference(tok, CHEST, "Is there a collapsed lung?", "DX").allowed("") == {"pneumothorax?"}
    assert _reference(tok, CHEST, "PTX?", "DX").allowed("") == {"pneumothorax?"}  # the abbreviation
    # naming no finding, any finding's yes / no field may answer
    assert _reference(tok, CHEST, "Is anything wrong?", "DX").allowed("") == set(CHEST)


def test_asked_which_side_of_the_brain_holds_the_tumour_the_answer_opens_with_the_hemisphere(tok):
    which = _reference(tok, BRAIN, "Which side of the brain holds the tumor?", "MR")
    assert which.allowed("") == {"hemisphere"}
    assert _reference(tok, BRAIN, "How big is the tumor?", "MR").allowed("") == {"tumor", "tumor volume"}


def test_asked_how_large_the_edema_is_the_answer_never_opens_with_the_edema_yes_no_field(tok):
    keys = ("edema", "edema?", "edema volume", "tumor volume")
    assert _reference(tok, keys, "How large is the edema?", "MR").allowed("") == {"edema", "edema volume"}
    assert _reference(tok, keys, "Describe the edema.", "MR").allowed("") == {"edema", "edema?", "edema volume"}
    # naming nothing the results hold: any field but a yes / no one
    assert _reference(tok, BRAIN, "What do you see?", "MR").allowed("") == {"tumor", "tumor volume", "edema volume", "hemisphere"}


def test_a_reference_names_the_structure_of_its_own_sentence_and_is_free_after_an_organ_no_result_measured(tok):
    c = _reference(tok, ("left kidney volume", "right kidney volume", "liver volume"), "What are the kidney volumes?")
    assert c.allowed("The left kidney is 150 mL. The right kidney volume is ") == {"right kidney volume"}
    assert c.allowed("The spleen volume is ") == set()  # no result measured it: the agent shows "(not in the expert result)"
    kept = _kept_after(c, tok, "The right kidney volume is [[")
    assert kept and all("right kidney volume]]".startswith(p.lower()) for p in kept)


def test_asked_left_or_right_hemisphere_the_answer_does_not_open_with_one_sided_field(tok):
    keys = ("hemisphere", "left hemisphere", "right hemisphere")
    assert _reference(tok, keys, "Is the tumor in the left or right hemisphere?", "MR").allowed("") == {"hemisphere"}


def test_the_parsed_question_form_decides_a_yes_no_answer_not_the_wording(tok):
    # "Pneumothorax?" has no auxiliary verb: the parse reads it as yes / no
    assert _reference(tok, CHEST, "Pneumothorax?", "DX").allowed("") == {"pneumothorax?"}
    assert _reference(tok, CHEST).allowed("") == set()  # no question: an opening reference has no subject
    # and a question worded with an auxiliary is not read as yes / no when it offers two sides
    assert _reference(tok, BRAIN, "Is it the left or the right hemisphere?", "MR").allowed("") != {"left hemisphere?"}


def test_the_parse_reads_what_the_wording_hid_british_spelling_lay_terms_and_the_screen(tok):
    """Each of these was read wrong from the question's words alone (the text-reading version's answer in the comment):
    the parse reads "which half" as a side question, a lay term or an abbreviation as its finding, "on screen" as the
    slice shown."""
    # "tumour" matched no field and "which half" no side pattern: any field but a yes / no one was allowed
    assert _reference(tok, BRAIN, "Which half of the brain is the tumour in?", "MR").allowed("") == {"hemisphere"}
    # "popped lung" is a pneumothorax: the wording had no auxiliary verb, so nothing was kept
    assert _reference(tok, CHEST, "Popped lung?", "DX").allowed("") == {"pneumothorax?"}
    assert _reference(tok, CHEST, "Any water on the lungs?", "DX").allowed("") == {"pleural effusion?"}  # was: nothing kept
    # a renal cyst "on screen" is the slice's kidney cyst: nothing was kept
    keys = ("kidney cyst?", "kidney cyst in this slice?", "liver tumor?", "liver tumor in this slice?")
    assert _reference(tok, keys, "Any renal cyst on screen?").allowed("") == {"kidney cyst in this slice?"}
    # asked how big the liver lesion is, the liver's own volume is not the answer (it was allowed beside the tumour)
    assert _reference(tok, ("liver volume", "liver", "liver tumor", "liver tumor?"), "How big is the liver lesion?").allowed("") == {"liver tumor"}


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
