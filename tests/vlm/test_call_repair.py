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
    ("any cysts in the kidneys", ["left kidney", "right kidney", "kidney cyst"]),
])
def test_a_question_names_the_structures_it_mentions(ct, question, named):
    assert named_choices(question, ct.vocabulary["targets"]) == named


def test_a_liver_volume_question_called_on_lesions_is_run_on_the_liver(ct):
    args, notes = repair_arguments(ct, {"targets": "lesions"}, "What is the liver volume?")
    assert args == {"targets": "liver"} and "lesions" in notes[0]


@pytest.mark.parametrize("value", ["liver", "organs", "everything", ["liver", "spleen"]])
def test_a_call_that_covers_the_named_structure_is_kept(ct, value):
    assert repair_arguments(ct, {"targets": value}, "What is the liver volume?") == ({"targets": value}, [])


def test_a_lesion_call_on_a_question_about_lesions_in_an_organ_is_kept(ct):
    assert repair_arguments(ct, {"targets": "kidney cyst"}, "any cysts in the kidneys?") == ({"targets": "kidney cyst"}, [])


def test_a_call_without_the_argument_keeps_the_experts_default(ct):
    assert repair_arguments(ct, {}, "What is the liver volume?") == ({}, [])


def test_a_call_to_an_expert_that_cannot_read_the_study_goes_to_the_one_that_can(registry_like):
    from vlm.call_repair import repair_expert

    experts, volumes = registry_like
    assert repair_expert("ct_segmentation", experts, volumes) == ("mri_brain_tumor", "expert 'ct_segmentation' cannot read this study; "
                                                                 "ran 'mri_brain_tumor', the one expert for this study")
    assert repair_expert("ct_classification", experts, volumes)[0] == "mri_brain_tumor"
    assert repair_expert("mri_brain_tumor", experts, volumes) == ("mri_brain_tumor", "")
    both = {**volumes, "CT": _volume("CT")}
    assert repair_expert("cxr_classification", experts, both) == ("cxr_classification", "")  # two readers: ambiguous, no change


def _volume(modality, sequence=""):
    import numpy as np

    from data.study import Volume

    return Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), modality=modality, sequence=sequence)


@pytest.fixture()
def registry_like():
    from experts.cxr_classification import CXRClassificationExpert
    from experts.mri_brain_tumor import BrainTumorExpert

    experts = {"ct_segmentation": CTSegmentationExpert.__new__(CTSegmentationExpert),
               "mri_brain_tumor": BrainTumorExpert.__new__(BrainTumorExpert),
               "cxr_classification": CXRClassificationExpert.__new__(CXRClassificationExpert)}
    volumes = {s: _volume("MR", s) for s in ("T1", "T1c", "T2", "FLAIR")}
    return experts, volumes


def test_an_argument_the_expert_does_not_take_is_dropped_not_failed():
    from experts.cxr_classification import CXRClassificationExpert

    cxr = CXRClassificationExpert.__new__(CXRClassificationExpert)
    arguments, notes = repair_arguments(cxr, {"targets": "aorta"}, "Is there a pneumothorax?")
    assert arguments == {} and notes and "targets" in notes[0] and "dropped" in notes[0]
