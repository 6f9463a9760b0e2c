"""An expert result as one field table: what the model reads and what an answer's references show both come from it."""

from __future__ import annotations

import numpy as np

from data.study import Volume
from data.tool_text import Finding, Measurement, ToolResult, format_tool_result, reference_keys, resolve_references
from data.result_fields import fields_from_text
from experts.base import ExpertResult, with_slice_findings

CT = ToolResult("ct_segmentation", {}, [Finding("liver tumor", True), Finding("kidney cyst", True), Finding("kidney cyst on the left", True)],
                [Measurement("liver", "volume", 1253.34, "mL"), Measurement("liver tumor", "count", 2, "count"),
                 Measurement("liver tumor", "volume", 12.3, "mL"), Measurement("liver tumor", "largest diameter", 25.12, "mm"),
                 Measurement("kidney cyst", "count", 1, "count"), Measurement("left kidney", "volume", 150.2, "mL"),
                 Measurement("right kidney", "volume", 120.9, "mL")])
CXR = ToolResult("cxr_classification", {}, [Finding("cardiomegaly", True, 0.871, 0.5), Finding("pneumothorax", False, 0.034, 0.5)])
MRI = ToolResult("mri_brain_tumor", {}, [Finding("tumor", True), Finding("left hemisphere", True)],
                 [Measurement("whole tumor", "volume", 52.1, "mL"), Measurement("whole tumor", "largest diameter", 40.2, "mm")])


def test_the_tool_message_the_model_reads_is_the_text_it_was_trained_on():
    assert format_tool_result(CXR) == '{"expert": "cxr_classification", "findings": {"cardiomegaly": "yes (0.87)", "pneumothorax": "no (0.03)"}}'
    assert format_tool_result(MRI) == ('{"expert": "mri_brain_tumor", "findings": {"tumor": "yes", "left hemisphere": "yes"}, '
                                       '"measurements": ["whole tumor volume: 52.1 mL", "whole tumor largest diameter: 40.2 mm"]}')
    assert format_tool_result(ToolResult("ct_segmentation")) == '{"expert": "ct_segmentation"}'


def test_a_liver_tumour_result_answers_count_size_side_and_presence_with_units_and_provenance():
    fields = CT.fields()
    assert fields["liver volume"].value == "1253.3 mL" and fields["liver volume"].number == 1253.3 and fields["liver volume"].unit == "mL"
    assert fields["liver tumor"].value == "2 found, volume 12.3 mL, largest diameter 25.1 mm" and fields["liver tumor"].rule == "count"
    assert fields["liver tumor?"].value == "yes (2 found, volume 12.3 mL, largest diameter 25.1 mm)"
    assert fields["liver tumor size"].value == "medium (largest diameter 25.1 mm)" and fields["liver tumor size"].unit == "mm"
    assert fields["kidney cyst side"].value == "left"
    assert fields["larger kidney"].value == "the left kidney (left 150.2 mL, right 120.9 mL)"
    assert {f.provenance for f in fields.values()} == {"ct_segmentation"}


def test_a_chest_film_finding_keeps_its_probability_and_answers_either_polarity():
    fields = CXR.fields()
    assert fields["cardiomegaly?"].value == "yes (probability 0.87)" and fields["cardiomegaly"].probability == 0.87
    assert fields["cardiomegaly normal?"].value == "no (cardiomegaly present, probability 0.87)"
    assert fields["normal?"].value == "no (cardiomegaly (0.87))"
    assert fields["impression"].value == "Cardiomegaly." and fields["negative findings"].value == "pneumothorax (0.03)"
    assert fields["Pneumothorax ?"].value == "no (probability 0.03)"  # a look-up reads the key as a reference writes it


def test_a_brain_tumour_side_is_its_hemisphere():
    fields = MRI.fields()
    assert fields["hemisphere"].value == "left hemisphere" and fields["tumor side"].value == "left (left hemisphere)"
    assert "tumor side" not in reference_keys([MRI])  # resolved when written, not offered to the model (as trained)


def test_a_text_only_caller_reads_the_same_fields_as_the_result_holds():
    for result in (CT, CXR, MRI):
        from_text = fields_from_text("<image>\n" + format_tool_result(result))
        assert {k: f.value for k, f in from_text.items()} == {k: f.value for k, f in result.fields().items()}
        assert reference_keys([format_tool_result(result)]) == reference_keys([result])


def test_the_table_is_built_once_and_follows_a_slice_added_to_the_result():
    result = ExpertResult("ct_segmentation", findings=[Finding("kidney cyst", True)],
                          label_volume=Volume(np.zeros((6, 6, 3), np.uint8), np.eye(4)), label_names={1: "kidney cyst"})
    assert result.fields() is result.fields()
    result.measurements.append(Measurement("kidney cyst", "count", 1, "count"))  # changed after the table was built
    assert result.fields()["kidney cyst"].value == "1 found"
    on_screen = with_slice_findings(result, 1)  # a question about the slice on screen: the copy says what it shows
    assert on_screen.fields()["kidney cyst in this slice?"].value == "no"
    assert "kidney cyst in this slice?" not in result.fields()


def test_the_latest_result_naming_a_field_wins_and_unknown_fields_are_said_so():
    newer = ToolResult("ct_segmentation", {}, [], [Measurement("liver", "volume", 1400.0, "mL")])
    text, missing = resolve_references("[[liver volume]] and [[spleen volume]]", [CT, newer])
    assert text == "1400.0 mL and (not in the expert result)" and missing == ["spleen volume"]


def test_an_absent_lesion_has_no_side_and_report_lists_hold_only_findings():
    from data.tool_text import Finding, Measurement, ToolResult, resolve_references

    result = ToolResult("ct_segmentation", findings=[Finding("liver tumor", True), Finding("liver tumor on the right", True),
                                                     Finding("kidney cyst", False), Finding("contrast", True)],
                        measurements=[Measurement("liver tumor", "count", 1, "count"), Measurement("kidney cyst", "count", 0, "count")])
    text, missing = resolve_references("[[kidney cyst side]] / [[impression]] / [[positive findings]]", [result])
    assert missing == [] and text == "none found / Liver tumor. / liver tumor"
