"""``m3 routing calibrate``: the routed accuracy / escalation-rate curve over confidence thresholds, from a phrasing
set asked of a scripted local model (reporting token probabilities) and a scripted large one, scored by the set's
own rules on real phantom studies."""

from __future__ import annotations

import json
import math

import pytest
from scripted_backend import ThresholdExpert

from experts.registry import ExpertRegistry
from vlm.backends.base import BackendInfo
from vlm.routing.calibrate import RoutedItem, routing_curve, suggest_threshold
from vlm.routing.cli import calibrate
from vlm.routing.config import RoutingConfig, RoutingError
from vlm.tools import format_tool_call

GOOD = format_tool_call("ct_segmentation", {})
BAD = format_tool_call("ct_segmentation", {"min_hu": "dense"})  # an argument the expert refuses: nothing is measured


class StandInCT(ThresholdExpert):
    """The threshold test expert under the CT expert's name (the set scores whether "the study's expert" ran)."""

    name = "ct_segmentation"


class ByQuestion:
    """Answers by the question's words: ``script`` maps a word to (replies by tool round, token probability)."""

    def __init__(self, name, script, reports_probabilities):
        self.script = script
        self.info = BackendInfo(name=name, takes_images=False, token_logprobs=reports_probabilities)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None, logprobs=None):
        question = next(m["content"] for m in messages if m["role"] == "user")
        replies, probability = next(v for k, v in self.script.items() if k in question)
        reply = replies[min(sum(m["role"] == "tool" for m in messages), len(replies) - 1)]
        if logprobs is not None:
            logprobs.extend([math.log(probability)] * 3)
        yield reply


def test_the_curve_routes_each_question_by_its_confidence_and_its_threshold_free_reasons():
    items = [RoutedItem(True, True, 0.9), RoutedItem(False, True, 0.3), RoutedItem(True, False, 0.5),
             RoutedItem(False, True, 0.95, ("text_dropped",)), RoutedItem(True, True, None, (), model_wrote=False),
             RoutedItem(False, True, None)]
    points = routing_curve(items, (0.0, 0.4, 0.6, 1.0))
    assert [(p.threshold, round(p.accuracy, 3), round(p.escalation_rate, 3)) for p in points] == [
        (0.0, 0.667, 0.167),  # only the dropped-text turn goes to the large model, which gets it right
        (0.4, 0.833, 0.333),  # + the 0.3 one, which the large model gets right too
        (0.6, 0.667, 0.5),  # + the 0.5 one, which only the local model got right
        (1.0, 0.667, 0.667)]  # every model turn with a confidence; the unmeasured one stays local, the policy one too
    assert [p.local_share for p in points] == pytest.approx([1 - p.escalation_rate for p in points])
    strict = routing_curve(items, (0.0,), escalate_unknown_confidence=True)[0]
    assert strict.escalation_rate == pytest.approx(2 / 6)  # the turn without token probabilities escalates too
    assert suggest_threshold(points, large_accuracy=5 / 6, target_ratio=0.98).threshold == 0.4  # large-only: 5 of 6
    assert suggest_threshold(points, large_accuracy=1.0) is None
    with pytest.raises(RoutingError, match="thresholds must be >= 0 and <= 1"):
        routing_curve(items, (1.5,))


def test_calibrate_asks_both_models_the_set_and_prints_and_writes_the_curve(tmp_path, capsys):
    lines = [{"intent": "run_expert", "study": "ct", "target": "", "phrasing": "Run the CT segmentation.", "style": "imperative"},
             {"intent": "run_expert", "study": "ct", "target": "", "phrasing": "Segment this CT please.", "style": "polite"},
             {"intent": "modality", "study": "ct", "target": "", "phrasing": "What modality is this?", "style": "question"}]
    phrasings = tmp_path / "set.jsonl"
    phrasings.write_text("".join(json.dumps(x) + "\n" for x in lines))
    local = ByQuestion("local-small", {"Run the CT": ([GOOD, "Measured."], 0.9), "Segment this": ([BAD, "I could not measure it."], 0.3),
                                       "modality": (["CT"], 0.5)}, reports_probabilities=True)
    large = ByQuestion("large-vlm", {"Run the CT": ([GOOD, "Done."], 1.0), "Segment this": ([GOOD, "Done."], 1.0),
                                     "modality": (["CT"], 1.0)}, reports_probabilities=False)
    registry = ExpertRegistry()
    registry.register(StandInCT.name, StandInCT)
    out = tmp_path / "calibration.json"
    report = calibrate(None, "http://big:8000/v1", "large-vlm", str(phrasings), str(out), thresholds=(0.0, 0.5, 1.0),
                       config=RoutingConfig(), local=local, large=large, registry=registry)
    # the local model fails the question it was unsure of (its call was refused); the large model answers all three
    assert report["local"]["accuracy"] == pytest.approx(2 / 3) and report["large"]["accuracy"] == 1.0
    assert [(i["confidence"], i["local_correct"], i["model_wrote"]) for i in report["items"]] == [
        (pytest.approx(0.9), True, True), (pytest.approx(0.3), False, True), (None, True, False)]  # the header answers the modality
    assert [(p["threshold"], round(p["accuracy"], 3), round(p["escalation_rate"], 3)) for p in report["curve"]] == [
        (0.0, 0.667, 0.0), (0.5, 1.0, 0.333), (1.0, 1.0, 0.667)]
    assert report["suggested"]["threshold"] == 0.5 and report["suggested"]["local_share"] == pytest.approx(2 / 3)
    assert json.loads(out.read_text())["curve"] == report["curve"]
    printed = capsys.readouterr().out
    assert "| 0.50 | 1.000 | 0.333 | 0.667 |" in printed and "Suggested: min_token_confidence = 0.50" in printed


def test_the_calibrate_command_reads_the_rules_the_site_would_route_by():
    from app.main import build_parser

    args = build_parser().parse_args(["routing", "calibrate", "--large-url", "http://big:8000/v1", "--large-model", "big",
                                      "--phrasings", "set.jsonl", "--thresholds", "0.3,0.6", "--statistic", "min",
                                      "--escalate-families", "report,comparison"])
    assert args.thresholds == (0.3, 0.6) and args.statistic == "min" and args.out == "routing_calibration.json"
    assert args.escalate_families == ("report", "comparison") and args.escalate_on == RoutingConfig().escalate_on
    with pytest.raises(SystemExit):
        build_parser().parse_args(["routing", "calibrate", "--large-url", "u", "--large-model", "m", "--phrasings", "s",
                                   "--thresholds", "0.5,2"])
