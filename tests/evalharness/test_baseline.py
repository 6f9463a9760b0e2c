"""The keyword-router baseline: which expert it calls, which result field its answer names, and ``m3 eval`` scoring it
beside the model on the same items (ground-truth experts, so these run in seconds)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from data.tool_text import Finding, Measurement, ToolResult, format_tool_call, format_tool_result, resolve_references
from vlm.backends.base import BackendInfo
from vlm.eval.baselines import UNCERTAIN, KeywordRouterBackend
from vlm.eval.metrics import closed_match


@pytest.fixture(scope="module")
def tools() -> list[dict]:
    from vlm.eval.harness import TruthRegistry

    registry = TruthRegistry()
    return [registry.get(name).tool_schema() for name in registry.names()]


def _reply(messages: list[dict], tools: list[dict]) -> str:
    return "".join(KeywordRouterBackend().stream_chat(messages, None, tools))


def _asked(question: str) -> list[dict]:
    return [{"role": "system", "content": "You are m3."}, {"role": "user", "content": "<image>\n" + question}]


def _answered(question: str, call: str, result: ToolResult) -> list[dict]:
    return _asked(question) + [{"role": "assistant", "content": call},
                               {"role": "tool", "name": result.expert, "content": format_tool_result(result)}]


CT_LIVER = ToolResult("ct_segmentation", {"targets": "liver"}, findings=[Finding("portal venous phase", True), Finding("contrast", True)],
                      measurements=[Measurement("liver", "volume", 1523.4, "mL"), Measurement("aorta", "mean attenuation", 160.2, "HU"),
                                    Measurement("liver", "mean attenuation", 105.7, "HU")])


def _cxr(effusion: bool) -> ToolResult:
    return ToolResult("cxr_classification", {}, findings=[
        Finding("cardiomegaly", True, 0.81, 0.5), Finding("pleural effusion", effusion, 0.93 if effusion else 0.07, 0.5),
        Finding("nodule", False, 0.12, 0.5), Finding("pneumothorax", False, 0.04, 0.5), Finding("consolidation", False, 0.2, 0.5)])


def test_a_liver_volume_question_calls_ct_segmentation_on_the_liver_and_answers_with_its_volume(tools):
    question = "What is the liver volume?"
    call = _reply(_asked(question), tools)
    assert call == format_tool_call("ct_segmentation", {"targets": "liver"})
    answer = _reply(_answered(question, call, CT_LIVER), tools)
    assert "[[liver volume]]" in answer
    shown, missing = resolve_references(answer, [format_tool_result(CT_LIVER)])
    assert "1523.4 mL" in shown and not missing
    assert "160.2" not in shown and "105.7" not in shown  # the other fields of the result are not the answer


@pytest.mark.parametrize("present", [True, False])
def test_a_yes_no_question_is_answered_with_the_findings_verdict_and_probability(tools, present):
    question = "Is there a pleural effusion on this radiograph?"
    call = _reply(_asked(question), tools)
    assert call == format_tool_call("cxr_classification", {})
    result = _cxr(present)
    answer = _reply(_answered(question, call, result), tools)
    assert "[[pleural effusion?]]" in answer
    shown, _ = resolve_references(answer, [format_tool_result(result)])
    assert closed_match(shown, "yes" if present else "no")
    assert ("0.93" if present else "0.07") in shown and "0.81" not in shown  # cardiomegaly's probability is not this finding's


@pytest.mark.parametrize("question, expert", [
    ("Classify this chest X-ray for findings.", "cxr_classification"),
    ("Is the heart enlarged?", "cxr_classification"),  # the radiograph's cardiomegaly, not the CT heart volume
    ("Is there a pneumothorax?", "cxr_classification"),
    ("Is there peritumoral oedema?", "mri_brain_tumor"),
    ("Which hemisphere is the tumour in?", "mri_brain_tumor"),
    ("Does the patient have a liver tumor?", "ct_segmentation"),
])
def test_questions_go_to_the_expert_their_keywords_name(tools, question, expert):
    reply = _reply(_asked(question), tools)
    assert reply.startswith("<tool_call>") and json.loads(reply[len("<tool_call>"):-len("</tool_call>")])["name"] == expert


def test_a_lesion_question_names_the_lesion_not_its_organ(tools):
    cyst = _reply(_asked("Is the cyst in the kidney small, medium or large?"), tools)
    assert cyst == format_tool_call("ct_segmentation", {"targets": "kidney cyst"})
    assert _reply(_asked("Measure both kidneys"), tools) == format_tool_call("ct_segmentation", {"targets": ["left kidney", "right kidney"]})


def test_a_question_naming_no_expert_is_uncertain_unless_one_expert_is_offered(tools):
    assert _reply(_asked("What modality is this?"), tools) == UNCERTAIN
    cxr_only = [t for t in tools if t["function"]["name"] == "cxr_classification"]
    assert _reply(_asked("Describe this image."), cxr_only) == format_tool_call("cxr_classification", {})
    # the question names an expert the study's tools do not include: no call to another one
    assert _reply(_asked("What is the liver volume?"), cxr_only) == UNCERTAIN


def test_a_follow_up_is_answered_from_the_earlier_result_without_a_new_call(tools):
    result = ToolResult("mri_brain_tumor", {}, findings=[Finding("tumor", True), Finding("left hemisphere", True)],
                        measurements=[Measurement("whole tumor", "volume", 52.1, "mL"), Measurement("tumor core", "volume", 12.3, "mL")])
    messages = _answered("Segment the brain tumor.", format_tool_call("mri_brain_tumor", {}), result)
    messages += [{"role": "assistant", "content": "Whole tumor volume: [[whole tumor volume]]."},
                 {"role": "user", "content": "And the tumor core volume?"}]
    answer = _reply(messages, tools)
    assert "<tool_call>" not in answer and "[[tumor core volume]]" in answer
    side = _reply(messages[:-1] + [{"role": "user", "content": "Which side is it on?"}], tools)
    assert resolve_references(side, [format_tool_result(result)])[0].startswith("left hemisphere")
    # a question the result does not answer gets a new call
    assert _reply(messages[:-1] + [{"role": "user", "content": "What is the spleen volume?"}], tools).startswith("<tool_call>")


def test_an_expert_error_is_answered_uncertain_without_yes_or_no(tools):
    messages = _asked("Is there a liver tumor?") + [
        {"role": "assistant", "content": format_tool_call("ct_segmentation", {"targets": "liver tumor"})},
        {"role": "tool", "name": "ct_segmentation", "content": json.dumps({"expert": "ct_segmentation", "error": "needs a CT volume"})}]
    answer = _reply(messages, tools)
    assert answer.startswith("Uncertain") and not closed_match(answer, "no") and not closed_match(answer, "yes")


class _NoBackend:
    info = BackendInfo(name="always-no", takes_images=True)

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        yield "no"


@pytest.fixture(scope="module")
def test_data(tmp_path_factory):
    from data.instructions import build_datasets

    out = tmp_path_factory.mktemp("baselinedata")
    build_datasets({"ct": 2, "mri": 2, "cxr": 2}, out, seed=0, split="test", questions_per_case=3)
    return out


def test_eval_scores_the_baseline_beside_the_model_on_the_same_items(test_data, tmp_path):
    from vlm.eval.harness import evaluate_model

    report = evaluate_model(_NoBackend(), test_data, tmp_path, experts="truth", progress=False, baseline="keyword", plan_calls=False)
    base = report["baseline"]
    assert base["name"] == "keyword" and set(base["headline"]) == set(report["headline"])
    assert base["vqa"]["n_closed"] == report["vqa"]["n_closed"] and base["experts"]["n"] == report["experts"]["n"]
    assert report["headline"]["call_recall"] == 0.0 and base["headline"]["call_recall"] > 0.5  # the router calls experts
    assert base["headline"]["closed_accuracy_with_expert"] > 0.8  # truth experts: right field, right verdict
    assert base["headline"]["closed_accuracy_other_picture"] is None  # never reads pictures: the control is not run
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["baseline"]["headline"] == base["headline"]
    assert len(json.loads((tmp_path / "baseline_vqa_answers.json").read_text())) == len(json.loads((tmp_path / "vqa_answers.json").read_text()))
    md = (tmp_path / "eval.md").read_text()
    assert "| metric | model | baseline | model / baseline |" in md
    recall = base["headline"]["call_recall"]
    assert f"| expert-call recall | 0.000 | {recall:.3f} | 0.000 |" in md
    model_closed, base_closed = report["headline"]["closed_accuracy"], base["headline"]["closed_accuracy"]
    assert f"| closed-question accuracy | {model_closed:.3f} | {base_closed:.3f} | {model_closed / base_closed:.3f} |" in md


def test_an_unknown_baseline_is_refused_before_any_work(test_data, tmp_path):
    from vlm.eval.harness import evaluate_model

    with pytest.raises(ValueError, match="baseline must be one of"):
        evaluate_model(_NoBackend(), test_data, tmp_path / "out", experts="truth", progress=False, baseline="regex")
    assert not (tmp_path / "out").exists()
