"""The question parsed once: family, terms through the clinical lexicon, side, form, scope, experts.

Phrasings here are written for these tests; the frozen held-out set (tests/data/heldout_phrasings.jsonl) is never
used to tune the parser."""

import pytest

from vlm.intent import parse_question

EXPERTS = {"ct_segmentation": ("CT",), "mri_brain_tumor": ("MR",), "cxr_classification": ("DX", "CR")}


@pytest.mark.parametrize("modality, question, family, terms, keys", [
    ("CT", "any hepatic mets?", "presence", ("liver tumor",), ("liver tumor?",)),
    ("CT", "count the renal cysts", "count", ("kidney cyst",), ("kidney cyst",)),
    ("CT", "how big is the lung nodlue", "size", ("lung nodule",), ("lung nodule size",)),
    ("CT", "Splenic volume?", "volume", ("spleen",), ("spleen volume",)),
    ("CT", "Which kidney is larger?", "comparison", ("kidneys",), ("larger kidney",)),
    ("CT", "what phase was this scanned in", "phase", ("contrast phase",), ("phase",)),
    ("CR", "Is the heart size normal?", "normality", ("cardiomegaly",), ("cardiomegaly normal?",)),
    ("CR", "any water on the lungs?", "presence", ("pleural effusion",), ("pleural effusion?",)),
    ("CR", "chance of a PTX?", "likelihood", ("pneumothorax",), ("pneumothorax",)),
    ("MR", "which hemisphere is the GBM in", "side", ("tumor",), ("tumor side",)),
    ("MR", "How much oedema?", "volume", ("edema",), ("edema volume",)),
])
def test_a_clinicians_wording_is_read_into_the_fields_that_answer_it(modality, question, family, terms, keys):
    intent = parse_question(question, [modality], EXPERTS)
    assert (intent.family, intent.terms, intent.answer_keys()) == (family, terms, keys)
    assert intent.experts == tuple(n for n, m in EXPERTS.items() if modality in m)


def test_the_same_word_means_the_finding_of_the_study_on_screen():
    assert parse_question("Is there a mass?", ["CT"], EXPERTS).terms == ("liver tumor",)
    assert parse_question("Is there a mass?", ["MR"], EXPERTS).terms == ("tumor",)
    assert parse_question("Any nodule?", ["DX"], EXPERTS).terms == ("nodule",)


def test_either_or_names_its_options_and_a_tag_question_is_not_a_side():
    either = parse_question("Is the cyst on the left or the right?", ["CT"], EXPERTS)
    assert (either.family, either.form, either.options, either.side) == ("side", "either_or", ("left", "right"), "")
    tag = parse_question("No pneumothorax, right?", ["DX"], EXPERTS)
    assert tag.negated and tag.side == "" and tag.family == "presence"
    left = parse_question("Is there a cyst in the left kidney?", ["CT"], EXPERTS)
    assert left.side == "left" and left.terms == ("kidney cyst",)  # the organ is where to look, not what to measure


def test_a_question_about_the_picture_on_screen_has_slice_scope():
    assert parse_question("On this slice, which side is the cyst?", ["CT"], EXPERTS).scope == "slice"
    assert parse_question("Is the liver tumour visible here?", ["CT"], EXPERTS).answer_keys() == ("liver tumor in this slice?", "liver tumor?")
    assert parse_question("Which side is the cyst on?", ["CT"], EXPERTS).scope == "study"


def test_two_questions_in_one_become_two_parts_and_the_second_inherits_the_subject():
    intent = parse_question("Is there a liver lesion and how big is it?", ["CT"], EXPERTS)
    assert [p.family for p in intent.parts] == ["presence", "size"]
    assert intent.answer_keys() == ("liver tumor?", "liver tumor size")


def test_a_follow_up_that_names_nothing_takes_the_last_subject():
    first = parse_question("Any renal cysts?", ["CT"], EXPERTS)
    assert parse_question("how many?", ["CT"], EXPERTS, [first]).answer_keys() == ("kidney cyst",)


@pytest.mark.parametrize("question, family", [
    ("pt name pls", "identity"), ("whose scan is this?", "identity"), ("When was she born?", "identity"),
    ("Can she go home today?", "decision"), ("What dose of steroids?", "decision"), ("Will he survive?", "decision"),
    ("hey", "help"), ("what can I ask you?", "help"),
    ("Is this an MRI or a CT?", "modality"), ("what sequences were acquired", "series"),
    ("draft the report", "report"), ("segment everything", "segment_all"), ("run the brain tumour model", "run_expert"),
])
def test_policy_and_header_questions_are_told_apart_from_image_questions(question, family):
    assert parse_question(question, ["MR"], EXPERTS).family == family


def test_whether_contrast_was_given_is_a_yes_no_on_contrast_and_which_phase_names_the_phase():
    assert parse_question("Was IV contrast given?", ["CT"], EXPERTS).answer_keys() == ("contrast?", "phase")
    assert parse_question("Was this scan acquired with intravenous contrast?", ["CT"], EXPERTS).family == "phase"
    assert parse_question("arterial or portal venous?", ["CT"], EXPERTS).answer_keys() == ("phase",)
    assert parse_question("Is the tumour small, medium or large?", ["MR"], EXPERTS).answer_keys() == ("tumor in this slice size", "whole tumor size")


@pytest.mark.parametrize("modality, question, finding", [
    ("DX", "Is the lung fully expanded?", "pneumothorax"),
    ("DX", "are both lungs up?", "pneumothorax"),
    ("DX", "costophrenic angles sharp?", "pleural effusion"),
])
def test_a_normal_state_asked_about_is_normality_as_to_its_finding(modality, question, finding):
    intent = parse_question(question, [modality])
    assert (intent.family, intent.terms) == ("normality", (finding,))


def test_a_side_pair_before_one_organ_names_both_organs():
    assert parse_question("left vs right kidney size", ["CT"]).terms == ("left kidney", "right kidney")
    assert parse_question("compare the left and right lungs", ["CT"]).terms == ("left lung", "right lung")


def test_two_kinds_of_question_joined_by_and_the_become_two_parts_but_one_kind_stays_one():
    two = parse_question("What's the contrast phase and the liver volume?", ["CT"])
    assert [(p.family, p.terms) for p in two.parts] == [("phase", ("contrast phase",)), ("volume", ("liver",))]
    one = parse_question("What is the volume of the liver and the spleen?", ["CT"])
    assert (one.family, one.terms, one.parts) == ("volume", ("liver", "spleen"), ())


def test_write_this_up_asks_for_a_report():
    assert parse_question("Can you write this up?", ["CT"]).family == "report"


def test_a_size_against_a_number_is_a_size_question_and_a_maximal_extent_is_a_length():
    assert parse_question("Is the lung nodule bigger than 1 cm?", ["CT"]).answer_keys() == ("lung nodule size",)
    assert parse_question("is the liver larger than 2000 ml?", ["CT"]).answer_keys() == ("liver volume",)
    assert parse_question("max extent of the lesion", ["MR"]).answer_keys() == ("whole tumor size",)
    assert parse_question("extent of the edema", ["MR"]).answer_keys() == ("edema volume",)


def test_slips_of_short_question_words_are_read_through():
    assert parse_question("hwo many nodules", ["CT"]).family == "count"
    assert parse_question("waht is the liver volume", ["CT"]).answer_keys() == ("liver volume",)


def test_a_topic_then_its_question_is_one_question_and_a_choice_among_options_is_not_yes_no():
    intent = parse_question("could you check for me: the cyst, which sde is it on?", ["CT"])
    assert (intent.family, intent.terms, intent.parts) == ("side", ("kidney cyst",), ())
    assert parse_question("Looking at the image, is there a cyst?", ["CT"]).form == "yes_no"
    assert parse_question("Is the nodule small, medium or large?", ["CT"]).form != "yes_no"
    scan = parse_question("Is this scan a CT or an MRI?", ["CT"])
    assert scan.family == "modality" and scan.form != "yes_no"


@pytest.mark.parametrize("modality, question, term", [
    ("DX", "hole in the lung?", "pneumothorax"), ("DX", "air leak around the lung?", "pneumothorax"),
    ("CT", "water-filled sac on the kidney?", "kidney cyst"), ("CT", "kidney blister?", "kidney cyst"),
    ("MR", "cancer in the brain?", "tumor"), ("MR", "bright part of the tumour after dye", "enhancing tumor"),
])
def test_lay_words_for_a_finding_name_it(modality, question, term):
    assert parse_question(question, [modality]).terms == (term,)


def test_an_organ_asked_enlarged_is_its_volume_and_a_side_follow_on_is_its_own_part():
    two = parse_question("Is the spleen enlarged and what is the contrast phase?", ["CT"])
    assert [(p.family, p.terms) for p in two.parts] == [("volume", ("spleen",)), ("phase", ("contrast phase",))]
    sided = parse_question("What's the tumour volume, and is it on the left?", ["CT"])
    assert [p.family for p in sided.parts] == ["volume", "presence"] and sided.parts[1].side == "left"
    assert parse_question("kidney cysts - count and largest size", ["CT"]).answer_keys() == ("kidney cyst", "kidney cyst size")
