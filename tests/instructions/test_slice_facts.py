"""The "in this slice" rule: the picture questions' answers and the experts' slice findings agree."""

from __future__ import annotations

import numpy as np
import pytest

from data.instructions.expert_dialogues import tool_result_from_truth
from data.instructions.views import make_view
from data.phantoms import generate
from data.phantoms.labels import CT_LABELS
from data.slice_facts import asks_about_shown_slice, slice_findings
from data.tool_text import Measurement
from experts.base import ExpertResult, with_slice_findings


@pytest.mark.parametrize("question, asked", [
    ("Is a kidney cyst shown in this slice?", True),
    ("Looking at the image, is any nodule in the lung visible on this slice? Thanks.", True),
    ("Could you tell me: can you see the spleen included here? Please answer briefly.", True),
    ("Can you check: do you see a liver tumor in this image?", True),
    ("Is this image an MRI or a CT?", False),  # "this image" is the subject, not where to look
    ("Can you check: what part of the body does this image show?", False),  # a polite lead-in's "can"
    ("Can you check: how many renal cysts can you see in this slice?", False),  # a count, not yes / no
    ("Which is larger in this slice: the tumor core or the edema?", False),
    ("Is there a kidney cyst anywhere in the scan?", False),
    ("What do you see here?", False),
    ("Quick question: is the liver tumour small, medium or large?", True),  # the size or side of what the slice shows
    ("Is the renal cyst on the left or the right side? Thank you.", True),
    ("Is the tumor in the left or right hemisphere?", False),  # the study's tumour, from the expert's whole-brain result
])
def test_questions_about_the_slice_on_screen_are_told_apart(question, asked):
    assert asks_about_shown_slice(question) is asked


def test_slice_findings_follow_the_organ_lesion_and_tumour_rules():
    sl = np.zeros((40, 40), np.int16)
    sl[0:4, 0:5] = 1  # liver: 20 px, shown
    sl[10:13, 10:13] = 2  # spleen: 9 px, not shown
    sl[20, 20:23] = 11  # kidney cyst: a 3 px component only, too small to see
    sl[30:32, 30:32] = 12  # lung nodule: 4 px, shown
    names = {1: "liver", 2: "spleen", 11: "kidney cyst", 12: "lung nodule"}
    ms = [Measurement("liver", "volume", 1.0, "mL"), Measurement("spleen", "volume", 1.0, "mL"),
          Measurement("kidney cyst", "count", 1, "count"), Measurement("lung nodule", "count", 1, "count"),
          Measurement("lung nodule", "volume", 1.0, "mL"), Measurement("aorta", "mean attenuation", 40.0, "HU")]
    found = {f.label: f.present for f in slice_findings("ct_segmentation", sl, names, ms)}
    assert found == {"liver in this slice": True, "spleen in this slice": False, "kidney cyst in this slice": False,
                     "lung nodule in this slice": True}  # the aorta's attenuation asks for no slice finding
    tumour = np.zeros((40, 40), np.int16)
    tumour[5:8, 5:8] = 2  # 9 px
    assert [(f.label, f.present) for f in slice_findings("mri_brain_tumor", tumour, {}, [])] == [("tumor in this slice", False)]
    tumour[8, 5] = 1
    assert slice_findings("mri_brain_tumor", tumour, {}, [])[0].present
    assert slice_findings("cxr_classification", sl, names, ms) == []


@pytest.mark.parametrize("kind, seed, targets", [("ct", 11, "everything"), ("ct", 12, "kidney cyst"), ("ct", 13, "organs"),
                                                 ("ct", 14, "liver tumor"), ("mri", 15, None), ("mri", 16, None)])
def test_a_perfect_expert_on_the_shown_slice_gives_the_training_datas_slice_findings(kind, seed, targets):
    """The agent's ``with_slice_findings`` on the phantom's own labels reproduces ``tool_result_from_truth``'s
    slice findings made from the picture's facts: training and inference read the slice the same way."""
    case = generate(kind, seed)
    view = make_view(case, np.random.default_rng([seed, 0x71E]))
    args = {"targets": targets} if targets else {}
    truth = tool_result_from_truth(kind, case.truth, args, np.random.default_rng(0), shown=view.facts)
    plain = tool_result_from_truth(kind, case.truth, args, np.random.default_rng(0))
    expected = truth.findings[len(plain.findings):]
    assert expected and all(" in this slice" in f.label for f in expected)
    names = {v: CT_LABELS[v] for v in range(1, 13)} if kind == "ct" else dict(case.label_names)
    result = ExpertResult(expert="ct_segmentation" if kind == "ct" else "mri_brain_tumor", findings=list(plain.findings),
                          measurements=list(plain.measurements), label_volume=case.volume.like(case.labels.astype(np.int16)), label_names=names)
    got = with_slice_findings(result, view.slice_index)
    assert [(f.label, f.present) for f in got.findings[len(plain.findings):]] == [(f.label, f.present) for f in expected]
    sizes = truth.measurements[len(plain.measurements):]  # the sizes of what the slice shows, in the same words
    assert [m.text() for m in got.measurements[len(plain.measurements):]] == [m.text() for m in sizes]
    assert len(result.findings) == len(plain.findings)  # the expert's own (cached) result is left as it was
    assert with_slice_findings(result, case.volume.shape[2]) is result  # off the grid: nothing added
