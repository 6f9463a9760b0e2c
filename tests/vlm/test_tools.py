"""Tool-call parsing: JSON spans, legacy VILA-M3 triggers, malformed calls, hiding calls while streaming."""

from __future__ import annotations

from vlm.safety import modality_mismatch, ungrounded_numbers
from vlm.tools import ToolCallFilter, format_tool_call, legacy_arguments, parse_tool_calls

CT_SCHEMA = {"type": "object", "properties": {"targets": {"anyOf": [
    {"type": "string", "enum": ["everything", "organs", "liver tumor", "liver"]},
    {"type": "array", "items": {"type": "string", "enum": ["everything", "organs", "liver tumor", "liver"]}}]}}}


def test_json_call_and_visible_text():
    text = 'Let me measure it. <tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call>'
    visible, calls = parse_tool_calls(text)
    assert visible == "Let me measure it."
    assert [(c.name, c.arguments, c.error) for c in calls] == [("ct_segmentation", {"targets": "liver"}, None)]
    assert parse_tool_calls(format_tool_call("cxr_classification", {}))[1][0].name == "cxr_classification"


def test_two_calls_unterminated_call_and_string_arguments():
    text = ('<tool_call>{"name": "a", "arguments": "{\\"k\\": 1}"}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {}}')  # generation stopped before the closing tag
    _, calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("a", {"k": 1}), ("b", {})]


def test_malformed_calls_carry_errors_not_exceptions():
    _, calls = parse_tool_calls('<tool_call>{"name": "ct_segmentation", "arguments": {targets: liver}}</tool_call>')
    assert calls[0].error and "JSON" in calls[0].error
    _, calls = parse_tool_calls('<tool_call>["ct_segmentation"]</tool_call>')
    assert "name" in calls[0].error
    _, calls = parse_tool_calls('<tool_call>{"name": "x", "arguments": [1]}</tool_call>')
    assert calls[0].name == "x" and "object" in calls[0].error


def test_legacy_triggers_map_to_experts_and_schema():
    visible, calls = parse_tool_calls("Sure. <VISTA3D(hepatic tumor)> then <BRATS()> and <CXR()>")
    assert visible == "Sure."
    assert [c.name for c in calls] == ["ct_segmentation", "mri_brain_tumor", "cxr_classification"]
    assert legacy_arguments(calls[0].arguments, CT_SCHEMA) == {"targets": "liver tumor"}
    assert legacy_arguments(calls[1].arguments, {"type": "object", "properties": {}}) == {}


def test_stream_filter_hides_calls_split_across_pieces():
    pieces = ["The answer", " is <", "b>bold</b> ", "<tool", "_call>", '{"name": "x"}', "</tool_call>", " trailing"]
    f = ToolCallFilter()
    shown = "".join(f.feed(p) for p in pieces) + f.flush()
    assert shown == "The answer is <b>bold</b> "
    g = ToolCallFilter()
    assert "".join(g.feed(p) for p in ["a <", "CX", "R()>"]) + g.flush() == "a "


def test_grounding_accepts_rounded_and_percent_numbers_only():
    sources = ['{"measurements": ["liver volume: 1523.4 mL", "liver tumor count: 2"], "findings": {"effusion": "yes (0.87)"}}']
    assert ungrounded_numbers("Liver 1523.4 mL (about 1523 mL), 2 tumours, effusion 87%.", sources) == []
    assert ungrounded_numbers("The liver is 1710 mL and T1c shows 3D change.", sources) == ["1710"]
    assert ungrounded_numbers("Is it above 5 cm? No.", [], question="Is it above 5 cm?") == []


def test_modality_mismatch_needs_a_topic_and_a_missing_modality():
    from vlm.intent import parse_question

    experts = {"ct_segmentation": ("CT",), "mri_brain_tumor": ("MR",), "cxr_classification": ("DX", "CR")}
    msg = modality_mismatch(parse_question("What is the liver volume?", ["DX"], experts), ["DX"], experts)
    assert msg and "CT" in msg and "radiograph" in msg
    assert modality_mismatch(parse_question("What is the liver volume?", ["CT"], experts), ["CT"], experts) is None
    assert modality_mismatch(parse_question("Describe this image.", ["DX"], experts), ["DX"], experts) is None


def test_reference_filter_holds_partial_references_and_passes_plain_brackets():
    from vlm.tools import ReferenceFilter

    filt = ReferenceFilter(lambda ref: "<" + ref[2:-2] + ">")
    pieces = ["a [", "[liv", "er volume]", "] b [x] c [", "[never closed"]
    out = "".join(filt.feed(p) for p in pieces) + filt.flush()
    assert out == "a <liver volume> b [x] c [[never closed"
