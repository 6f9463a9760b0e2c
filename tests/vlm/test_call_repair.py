"""An expert call is kept on the structure the question names; a call that already covers it is left alone."""

from __future__ import annotations

import pytest

from experts.ct_segmentation import CTSegmentationExpert
from vlm.call_repair import named_choices, repair_arguments


@pytest.fixture(scope="module")
def ct():
    return CTSegmentationExpert.__new__(CTSegmentationExpert)  # schema and vocabulary only, no weights


@pytest.mark.parametrize("question,named", [
    ("What is the liver volume?", ["liver"]),
    ("how big are the kidneys", ["left kidney", "right kidney"]),
    ("Any renal cyst?", ["kidney cyst"]),  # the lesion phrase, not also "kidney"
    ("Is there a liver tumour?", ["liver tumor"]),
    ("Volume of the left kidney?", ["left kidney"]),
    ("Describe the study.", []),
])
def test_a_question_names_the_structures_it_mentions(ct, question, named):
    assert named_choices(question, ct.vocabulary["targets"]) == named


def test_a_liver_volume_question_called_on_lesions_is_run_on_the_liver(ct):
    args, notes = repair_arguments(ct, {"targets": "lesions"}, "What is the liver volume?")
    assert args == {"targets": "liver"} and "lesions" in notes[0]


@pytest.mark.parametrize("value", ["liver", "organs", "everything", ["liver", "spleen"]])
def test_a_call_that_covers_the_named_structure_is_kept(ct, value):
    assert repair_arguments(ct, {"targets": value}, "What is the liver volume?") == ({"targets": value}, [])


def test_a_call_without_the_argument_keeps_the_experts_default(ct):
    assert repair_arguments(ct, {}, "What is the liver volume?") == ({}, [])
