"""The harness's scorers on hand-made answers and on the phantom reports themselves."""

from __future__ import annotations

import numpy as np
import pytest


def test_vqa_scores_closed_by_exact_match_and_open_by_recall():
    from vlm.eval.vqa import VQAItem, score_vqa

    items = [VQAItem("q", "yes", "Yes, there is.", "closed", "presence", "ct"), VQAItem("q", "no", "yes", "closed", "presence", "ct"),
             VQAItem("q", "left lung", "the left lung", "open", "location", "ct"), VQAItem("q", "left lung", "lung", "open", "location", "ct")]
    s = score_vqa(items)
    assert s["closed_accuracy"] == 0.5 and s["open_recall"] == pytest.approx(0.75)
    assert s["by_category"]["presence (closed)"] == {"score": 0.5, "n": 2}
    assert s["closed_prior_baseline"] == 0.5  # presence on CT: one yes, one no


def test_closed_accuracy_is_split_into_picture_and_expert_answered_questions():
    from vlm.eval.vqa import VQAItem, score_vqa

    items = [VQAItem("q", "yes", "yes (probability 0.91)", "closed", "presence", "cxr", "cxr_classification", ["cxr_classification"]),
             VQAItem("q", "no", "yes", "closed", "presence", "cxr", "cxr_classification", []),  # answered without the expert
             VQAItem("q", "left", "left", "closed", "laterality", "cxr"), VQAItem("q", "0", "1", "open", "count", "cxr")]
    s = score_vqa(items)
    assert s["closed_accuracy"] == pytest.approx(2 / 3)
    assert (s["closed_accuracy_from_picture"], s["n_closed_from_picture"]) == (1.0, 1)
    assert (s["closed_accuracy_with_expert"], s["n_closed_with_expert"], s["closed_expert_called"]) == (0.5, 2, 0.5)
    assert score_vqa(items[2:])["closed_accuracy_with_expert"] is None


def test_prior_baseline_answers_each_question_type_with_its_most_common_answer():
    from vlm.eval.vqa import VQAItem, prior_baseline

    items = [VQAItem("q", a, "x", "closed", cat, kind) for a, cat, kind in
             [("no", "heart size", "cxr"), ("no", "heart size", "cxr"), ("yes", "heart size", "cxr"),
              ("left", "laterality", "mri"), ("right", "laterality", "mri"), ("yes", "heart size", "ct")]]
    items.append(VQAItem("q", "left lung", "x", "open", "location", "ct"))
    assert prior_baseline(items) == pytest.approx(4 / 6)
    assert prior_baseline(items[-1:]) is None


@pytest.mark.parametrize("kind", ["ct", "mri", "cxr"])
def test_finding_vocabulary_reads_the_phantom_reports(kind):
    """Every generated caption, read back by the extractor, gives exactly the case's true findings
    (negated mentions such as "No effusion, no pneumothorax" do not count)."""
    from data.instructions import caption, make_view, report_findings
    from data.phantoms import generate
    from vlm.eval.metrics import extract_findings
    from vlm.eval.report import FINDING_VOCABULARY

    for seed in range(4):
        view = make_view(generate(kind, 900 + seed), np.random.default_rng(seed))
        text = caption(view, np.random.default_rng(seed))
        assert extract_findings(text, FINDING_VOCABULARY[kind]) == set(report_findings(view)), text


def test_report_scores():
    from vlm.eval.report import ReportItem, score_reports

    ref = "Findings: A 12 mm nodule in the left upper zone. Impression: Left lung nodule."
    good = score_reports([ReportItem(ref, ref, ["nodule"], "cxr")])
    bad = score_reports([ReportItem("The lungs are clear. No nodule.", ref, ["nodule"], "cxr")])
    assert good["finding_f1"] == 1.0 and good["bleu4"] > 99
    assert bad["finding_f1"] == 0.0 and bad["rouge_l"] < good["rouge_l"]


def test_dialogue_scores_calls_and_grounding():
    from vlm.eval.tools import DialogueItem, score_dialogues

    tool = '{"expert": "ct_segmentation", "measurements": ["liver volume: 1523.4 mL"]}'
    right = DialogueItem([("ct_segmentation", {"targets": "liver"})], [("ct_segmentation", {"targets": "liver"})],
                         [("The liver volume is 1523.4 mL.", "The liver volume is 1523.4 mL.")], [tool])
    wrong_args = DialogueItem([("ct_segmentation", {"targets": "liver"})], [("ct_segmentation", {"targets": "spleen"})],
                              [("The liver volume is 1700 mL.", "The liver volume is 1523.4 mL.")], [tool])
    unneeded = DialogueItem([], [("cxr_classification", {})], [("This is a CT image.", "This is a CT image.")], [], task="no-expert")
    s = score_dialogues([right, wrong_args, unneeded])
    assert s["call_precision"] == pytest.approx(1 / 3) and s["call_recall"] == pytest.approx(1 / 2)
    assert s["call_name_recall"] == 1.0
    assert s["grounded_answer_rate"] == 0.5  # 1700 appears in no tool result (within 5 %)
    assert s["no_call_when_not_needed"] == 0.0


def test_grounding_leaves_out_textbook_numbers():
    """A reference quoting textbook constants (not an expert result) asks for no grounding; a reference
    that quotes the expert still does, however the model answers."""
    from vlm.eval.tools import DialogueItem, score_dialogues

    tool = '{"expert": "ct_segmentation", "measurements": ["liver volume: 1523.4 mL"]}'
    hu = "Hounsfield units: attenuation relative to water (0 HU) and air (-1000 HU)."
    item = DialogueItem([("ct_segmentation", {"targets": "liver"})], [("ct_segmentation", {"targets": "liver"})],
                        [("The liver volume is 1523.4 mL.", "The liver volume is 1523.4 mL."), (hu, hu)], [tool],
                        quotes_expert=[True, False])
    s = score_dialogues([item])
    assert s["grounded_answer_rate"] == 1.0 and s["n_numeric_answers"] == 1
    assert s["right_value_rate"] == 1.0  # the textbook answer still counts for right values
    legacy = DialogueItem(item.expected_calls, item.predicted_calls, item.answers, [tool])  # no flags: every numeric reference
    assert score_dialogues([legacy])["grounded_answer_rate"] == 0.5
    wrong = DialogueItem(item.expected_calls, item.predicted_calls, [("The liver volume is (not in the expert result).",
                                                                      "The liver volume is 1523.4 mL."), (hu, hu)], [tool],
                         quotes_expert=[True, False])
    assert score_dialogues([wrong])["grounded_answer_rate"] == 0.0


def test_which_references_quote_an_expert():
    from vlm.eval.harness import quotes_expert

    tool = {"from": "tool", "value": '{"measurements": ["liver volume: 1523.4 mL"]}'}
    hu = "Hounsfield units: water (0 HU) and air (-1000 HU)."
    with_refs = [{"from": "human", "value": "Liver volume?"}, {"from": "gpt", "value": "<tool_call>{}</tool_call>"}, tool,
                 {"from": "gpt", "value": "The liver volume is [[liver volume]]."}, {"from": "human", "value": "What is HU?"},
                 {"from": "gpt", "value": hu}]
    assert quotes_expert("The liver volume is [[liver volume]].", with_refs) and not quotes_expert(hu, with_refs)
    typed = [t if t["from"] != "gpt" or "[[" not in t["value"] else {"from": "gpt", "value": "The liver volume is 1523.4 mL."} for t in with_refs]
    assert quotes_expert("The liver volume is 1523.4 mL.", typed) and not quotes_expert(hu, typed)
    assert not quotes_expert(hu, [{"from": "human", "value": "What is HU?"}, {"from": "gpt", "value": hu}])  # no expert at all
