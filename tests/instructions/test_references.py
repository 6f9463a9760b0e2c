"""Field references in answers (``[[liver volume]]``) and how the tool results fill them."""

from __future__ import annotations

from data.tool_text import Finding, Measurement, ToolResult, format_tool_result, parse_tool_result, resolve_references

CT = format_tool_result(ToolResult("ct_segmentation", {}, [Finding("liver tumor", True), Finding("kidney cyst", False)], [
    Measurement("liver", "volume", 1253.34, "mL"), Measurement("liver tumor", "count", 2, "count"),
    Measurement("liver tumor", "volume", 12.3, "mL"), Measurement("liver tumor", "largest diameter", 25.12, "mm"),
    Measurement("kidney cyst", "count", 0, "count")]))
MRI = format_tool_result(ToolResult("mri_brain_tumor", {}, [Finding("tumor", True), Finding("left hemisphere", True)], [
    Measurement("whole tumor", "volume", 52.1, "mL"), Measurement("whole tumor", "largest diameter", 40.2, "mm")]))
CXR = format_tool_result(ToolResult("cxr_classification", {}, [Finding("cardiomegaly", True, 0.871, 0.5),
                                                                Finding("pneumothorax", False, 0.12, 0.5)]))


def test_each_kind_of_key_resolves():
    text, missing = resolve_references(
        "[[liver volume]] | [[Liver  Tumor]] | [[kidney cyst]] | [[cardiomegaly]] | [[pneumothorax]] | [[whole tumor]] | [[hemisphere]]",
        [CT, MRI, CXR])
    assert missing == []
    assert text.split(" | ") == ["1253.3 mL", "2 found, volume 12.3 mL, largest diameter 25.1 mm", "none found",
                                 "present (probability 0.87)", "not present (probability 0.12)",
                                 "volume 52.1 mL, largest diameter 40.2 mm", "left hemisphere"]


def test_unknown_keys_are_reported_and_the_latest_result_wins():
    newer = format_tool_result(ToolResult("ct_segmentation", {}, [], [Measurement("liver", "volume", 1400.0, "mL")]))
    text, missing = resolve_references("[[liver volume]] and [[spleen volume]]; [x] stays", [CT, newer])
    assert text == "1400.0 mL and (not in the expert result); [x] stays" and missing == ["spleen volume"]
    assert resolve_references("[[liver volume]]", [])[1] == ["liver volume"]


def test_parse_tool_result_ignores_errors_and_other_text():
    assert parse_tool_result('{"expert": "x", "error": "bad"}') == ({}, {})
    assert parse_tool_result("not json {") == ({}, {})
    assert parse_tool_result("<image>\n" + CT)[0]["liver volume"] == "1253.3 mL"


def test_unfinished_references_lose_their_marks_and_are_reported():
    text, missing = resolve_references("The right kidney]]. And [[liver volume]] [[spleen", [CT])
    assert text == "The right kidney. And 1253.3 mL spleen" and missing == ["malformed reference"]


def test_finding_lists_read_as_a_report_states_them():
    from vlm.eval.metrics import extract_findings
    from vlm.eval.report import FINDING_VOCABULARY

    report = "Present: [[positive findings]]. Absent: [[negative findings]]. Impression: [[impression]]"
    text, missing = resolve_references(report, [CXR])
    assert missing == []
    assert text == "Present: cardiomegaly (0.87). Absent: pneumothorax (0.12). Impression: Cardiomegaly."
    assert extract_findings(text, FINDING_VOCABULARY["cxr"]) == {"cardiomegaly"}  # "Absent: ..." is a negation
    normal = format_tool_result(ToolResult("cxr_classification", {}, [Finding("cardiomegaly", False, 0.2, 0.5)]))
    text, _ = resolve_references(report, [normal])
    assert text == "Present: none. Absent: cardiomegaly (0.20). Impression: No finding above the expert's thresholds."
    assert extract_findings(text, FINDING_VOCABULARY["cxr"]) == set()
    # a result without findings has no finding lists
    only_volume = format_tool_result(ToolResult("ct_segmentation", {}, [], [Measurement("liver", "volume", 1.0, "mL")]))
    assert resolve_references("[[impression]]", [only_volume])[1] == ["impression"]


def test_reference_keys_are_what_the_resolver_fills():
    from data.tool_text import reference_keys

    keys = reference_keys([CT, CXR])
    assert {"liver volume", "liver", "cardiomegaly", "positive findings", "impression"} <= set(keys)
    assert "spleen volume" not in keys and "pneumothorax" in keys
    text, missing = resolve_references(" ".join(f"[[{k}]]" for k in keys), [CT, CXR])
    assert missing == [] and "(not in the expert result)" not in text
    assert reference_keys([]) == [] and reference_keys(['{"error": "no CT series"}']) == []


def test_a_finding_asked_as_a_closed_question_reads_yes_or_no():
    text, missing = resolve_references("[[cardiomegaly?]] | [[Pneumothorax ?]] | [[tumor?]] | [[edema?]]", [MRI, CXR])
    assert text.split(" | ")[:3] == ["yes (probability 0.87)", "no (probability 0.12)", "yes"]
    assert missing == ["edema?"]  # a question on a finding the result does not hold is not answered
    assert resolve_references("[[liver volume?]]", [CT])[1] == ["liver volume?"]  # only findings answer yes / no
    from data.tool_text import reference_keys

    assert {"cardiomegaly?", "pneumothorax?"} <= set(reference_keys([CXR]))


def test_sizes_and_sides_of_what_the_slice_shows():
    """A lesion's size is named from its largest diameter (small < 10 mm, medium 10–30 mm, large > 30 mm) and
    cites it (named from the diameter as printed, what the reader sees); its side comes from the "<x> on the <side>" findings; both are reference keys."""
    from data.tool_text import reference_keys

    shown = format_tool_result(ToolResult("ct_segmentation", {}, [
        Finding("kidney cyst in this slice", True), Finding("kidney cyst in this slice on the right", True),
        Finding("lung nodule in this slice on the left", True), Finding("lung nodule in this slice on the right", True)], [
        Measurement("kidney cyst in this slice", "largest diameter", 9.94, "mm"),
        Measurement("lung nodule in this slice", "largest diameter", 30.0, "mm"),
        Measurement("liver tumor in this slice", "largest diameter", 30.06, "mm")]))
    text, missing = resolve_references("[[kidney cyst in this slice size]] | [[lung nodule in this slice size]] | "
                                       "[[liver tumor in this slice size]] | [[kidney cyst in this slice side]] | "
                                       "[[lung nodule in this slice side]] | [[liver tumor in this slice side]]", [shown])
    assert text.split(" | ") == ["small (largest diameter 9.9 mm)", "medium (largest diameter 30.0 mm)",
                                 "large (largest diameter 30.1 mm)", "right", "left and right", "(not in the expert result)"]
    assert missing == ["liver tumor in this slice side"]
    keys = reference_keys([shown])
    assert {"kidney cyst in this slice size", "kidney cyst in this slice side", "lung nodule in this slice side"} <= set(keys)
    assert "liver tumor in this slice side" not in keys
    assert resolve_references("[[liver tumor size]]", [CT])[0] == "medium (largest diameter 25.1 mm)"  # the study's largest
