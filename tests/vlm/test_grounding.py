"""Header answers, the question's expert call, and answers that cite the fields they rest on."""

import numpy as np

from data.study import Volume
from data.tool_text import format_tool_result, Finding, Measurement, ToolResult
from vlm.grounding import cite_results, header_answer, question_arguments
from vlm.intent import parse_question

EXPERTS = {"ct_segmentation": ("CT",), "cxr_classification": ("DX", "CR")}
CT = format_tool_result(ToolResult("ct_segmentation", findings=[Finding("kidney cyst", True), Finding("kidney cyst on the left", True)],
                                   measurements=[Measurement("kidney cyst", "count", 2, "count"),
                                                 Measurement("kidney cyst", "largest diameter", 14.0, "mm"),
                                                 Measurement("left kidney", "volume", 150.2, "mL"),
                                                 Measurement("right kidney", "volume", 120.9, "mL")]))
CXR = format_tool_result(ToolResult("cxr_classification", findings=[Finding("cardiomegaly", True, 0.87), Finding("pneumothorax", False, 0.03)]))


def test_modality_and_series_come_from_the_header_not_the_picture():
    vols = {"T1": Volume(np.zeros((4, 4, 3)), np.eye(4), modality="MR", sequence="T1"),
            "FLAIR": Volume(np.zeros((4, 4, 5)), np.eye(4), modality="MR", sequence="FLAIR", description="AX FLAIR")}
    assert "MRI" in header_answer(parse_question("what kind of scan is this", ["MR"]), vols)
    series = header_answer(parse_question("Which sequences do we have?", ["MR"]), vols)
    assert series.startswith("The study holds 2 series") and "T1" in series and "FLAIR (AX FLAIR)" in series
    assert header_answer(parse_question("Any tumour?", ["MR"]), vols) is None


def test_a_normality_question_is_answered_about_normality_with_the_probability():
    answer, _ = cite_results(parse_question("Is the heart size normal?", ["DX"], EXPERTS), "", [CXR])
    assert answer == "No, not normal: cardiomegaly present, probability 0.87.\n\nSource: cxr_classification result."


def test_a_yes_against_the_expert_is_corrected_and_flagged():
    answer, flags = cite_results(parse_question("Is there a pneumothorax?", ["DX"], EXPERTS), "Yes, there is.", [CXR])
    assert answer.startswith("No (pneumothorax: probability 0.03).")  # "Yes, there is." states no field: the field answers
    assert flags == ["answer corrected to the expert result", "answer composed from the expert result"]
    kept, flags = cite_results(parse_question("Is there a pneumothorax?", ["DX"], EXPERTS), "Yes, pneumothorax (probability 0.03).", [CXR])
    assert kept.startswith("No, pneumothorax (probability 0.03).") and flags == ["answer corrected to the expert result"]


def test_a_bare_value_is_said_with_its_name_and_text_after_the_answer_is_dropped():
    intent = parse_question("which kidney is bigger", ["CT"], EXPERTS)
    answer, flags = cite_results(intent, "the left kidney (left 150.2 mL, right 120.9 mL). Spleen volume is (not in the expert result).", [CT])
    assert answer.startswith("The left kidney is larger (left 150.2 mL, right 120.9 mL).")  # the value leads, in a sentence
    assert "Spleen" not in answer and answer.endswith("Source: ct_segmentation result.")
    assert flags[0] == "model text dropped: 1 unsupported or malformed clause"


def test_counts_and_whole_study_sides_are_result_fields():
    count, _ = cite_results(parse_question("how many renal cysts", ["CT"], EXPERTS), "", [CT])
    assert count.startswith("2 kidney cysts found")
    side, _ = cite_results(parse_question("Which side are the renal cysts on?", ["CT"], EXPERTS), "", [CT])
    assert side.startswith("Left: the kidney cyst is on the left.")  # the side first, as an either-or answer leads


def test_any_two_structures_compared_say_which_is_larger():
    ct = format_tool_result(ToolResult("ct_segmentation", measurements=[Measurement("liver", "volume", 1133.7, "mL"),
                                                                         Measurement("spleen", "volume", 108.1, "mL")]))
    answer, _ = cite_results(parse_question("Is the liver bigger than the spleen?", ["CT"], EXPERTS), "", [ct])
    assert answer.startswith("The liver is larger than the spleen (1133.7 mL vs 108.1 mL).")


def test_a_segment_everything_request_gets_the_whole_result_when_the_answer_leaves_parts_out():
    intent = parse_question("segment all organs", ["CT"], EXPERTS)
    summary = "CT segmentation: liver 1134 mL; spleen 108 mL."
    answer, _ = cite_results(intent, "The liver is 1134 mL.", [CT], [summary])
    assert answer.endswith("CT segmentation: liver 1134 mL; spleen 108 mL.")
    assert cite_results(intent, summary, [CT], [summary])[0] == summary


def test_a_field_of_the_slice_on_screen_answers_before_the_whole_studys_and_the_study_answers_without_one():
    intent = parse_question("Is the cyst on the left or right?", ["CT"], EXPERTS)
    assert intent.scope == "slice" and intent.answer_keys() == ("kidney cyst in this slice side", "kidney cyst side")
    on_slice = format_tool_result(ToolResult("ct_segmentation", findings=[Finding("kidney cyst", True), Finding("kidney cyst on the left", True),
                                                                          Finding("kidney cyst on the right", True),
                                                                          Finding("kidney cyst in this slice on the right", True)],
                                             measurements=[Measurement("kidney cyst", "count", 2, "count")]))
    # the slice's side, no whole-study side beside it; without a slice on screen, the whole study's
    assert cite_results(intent, "right", [on_slice])[0].startswith("Right: the kidney cyst in this slice is on the right.")
    assert cite_results(intent, "", [CT])[0].startswith("Left: the kidney cyst is on the left.")


def test_a_segment_everything_request_asks_the_expert_for_everything():
    from experts.registry import default_registry

    ct = default_registry().get("ct_segmentation")
    assert question_arguments(ct, parse_question("segment all the organs please", ["CT"], EXPERTS)) == {"targets": "everything"}
    assert question_arguments(ct, parse_question("liver volume?", ["CT"], EXPERTS)) == {"targets": "liver"}


def test_clauses_with_numbers_no_result_holds_or_broken_brackets_are_dropped_and_the_fields_answer():
    intent = parse_question("how many renal cysts and which side", ["CT"], EXPERTS)
    answer, flags = cite_results(intent, "1 3 found, volume 7.9 mL (largest. The cysts are in the kidneys.", [CT])
    assert "7.9" not in answer and "(largest" not in answer
    assert answer.startswith("2 kidney cysts found") and "Left: the kidney cyst is on the left." in answer
    assert "answer composed from the expert result" in flags


def test_a_finding_of_another_organ_than_any_result_names_is_not_shown():
    answer, _ = cite_results(parse_question("fluid on the lungs?", ["DX"], EXPERTS),
                             "Liver tumors: present. No pleural effusion is reported.", [CXR])
    assert "Liver" not in answer


def test_an_answer_that_states_the_fields_stands_as_written_and_cites_its_expert():
    intent = parse_question("how many renal cysts", ["CT"], EXPERTS)
    written = "There are 2 kidney cysts, the largest 14.0 mm across."
    answer, flags = cite_results(intent, written, [CT])
    assert answer == written + "\n\nSource: ct_segmentation result." and flags == []


def test_a_clause_that_only_names_a_field_or_repeats_itself_is_not_an_answer():
    answer, flags = cite_results(parse_question("which kidney is bigger", ["CT"], EXPERTS), "aorta volume; aorta volume;", [CT])
    assert "aorta" not in answer and answer.startswith("The left kidney is larger")


def test_which_side_is_larger_is_said_by_the_fields_even_when_the_model_states_the_numbers():
    intent = parse_question("is the rt kidney biger than the left", ["CT"], EXPERTS)
    assert intent.family == "comparison" and intent.answer_keys() == ("larger kidney",)
    answer, _ = cite_results(intent, "The right kidney is larger (left 150.2 mL, right 120.9 mL).", [CT])
    assert answer.startswith("The left kidney is larger (left 150.2 mL, right 120.9 mL).")


def test_both_kidneys_are_measured_when_one_is_compared_with_the_other():
    from experts.registry import default_registry

    ct = default_registry().get("ct_segmentation")
    args = question_arguments(ct, parse_question("Is the right kidney bigger than the left?", ["CT"], EXPERTS))
    assert sorted(args["targets"]) == ["left kidney", "right kidney"]


def test_an_experts_doubt_about_another_structure_is_not_attached_to_the_answer():
    from vlm.grounding import relevant_doubts

    reasons = ["1 of 3 lung nodules have fat density, not soft tissue", "the scan is truncated"]
    assert relevant_doubts(parse_question("size of the kidney cyst", ["CT"], EXPERTS), reasons) == ["the scan is truncated"]
    assert relevant_doubts(parse_question("how many lung nodules", ["CT"], EXPERTS), reasons) == reasons
    assert relevant_doubts(parse_question("Draft a report", ["CT"], EXPERTS), reasons) == reasons


def test_one_typo_in_the_words_that_say_what_is_asked_is_read_through_but_side_stays_side():
    assert parse_question("sise of the kidny cyst", ["CT"], EXPERTS).family == "size"
    assert parse_question("splen volme", ["CT"], EXPERTS).family == "volume"
    assert parse_question("what phse of contrast", ["CT"], EXPERTS).family == "phase"
    assert parse_question("which side is the cyst on", ["CT"], EXPERTS).family == "side"


def test_a_report_that_leaves_out_part_of_the_result_is_replaced_by_the_impression_and_every_result():
    intent = parse_question("Draft a report for this CT.", ["CT"], EXPERTS)
    summary = "CT segmentation: 2 kidney cysts (largest 14 mm, left); left kidney 150 mL; right kidney 121 mL."
    answer, flags = cite_results(intent, "The left kidney measures 150.2 mL. No other findings.", [CT], [summary])
    assert answer.startswith("Impression:") and summary in answer and "No other findings" not in answer
    assert flags.count("answer composed from the expert result") == 1
    full = "Kidney cysts: 2, largest 14 mm, left. Left kidney 150 mL, right kidney 121 mL. " + summary
    assert cite_results(intent, full, [CT], [summary])[0].startswith(full)  # a report stating every result stands


def test_the_heart_of_a_chest_radiograph_is_read_as_its_size_but_its_volume_needs_a_ct():
    assert parse_question("heart normal sized?", ["DX"], EXPERTS).answer_keys() == ("cardiomegaly normal?",)
    assert parse_question("heart volume?", ["DX"], EXPERTS).terms == ()  # not a cardiomegaly volume


def test_which_lobe_or_organ_is_left_to_the_model_and_a_slice_count_is_not_answered_by_the_study_count():
    assert parse_question("which lobe is the lesion located?", ["MR"], {"mri_brain_tumor": ("MR",)}).family == "other"
    assert parse_question("how many renal cysts are on this slice?", ["CT"], EXPERTS).answer_keys() == ()
    assert parse_question("how many renal cysts?", ["CT"], EXPERTS).answer_keys() == ("kidney cyst",)


def test_what_abnormalities_is_answered_none_not_yes():
    normal = format_tool_result(ToolResult("cxr_classification", findings=[Finding("cardiomegaly", False, 0.02)]))
    answer, _ = cite_results(parse_question("what abnormalities do you see?", ["DX"], EXPERTS), "", [normal])
    assert answer.startswith("None")


def test_a_number_no_result_holds_stays_when_no_field_answers_the_question():
    intent = parse_question("how many renal cysts are on this slice?", ["CT"], EXPERTS)
    answer, _ = cite_results(intent, "1 kidney cyst in this slice.", [CT])
    assert answer.startswith("1 kidney cyst in this slice.")  # the model's own reading: the agent flags the number


def test_the_source_line_names_the_expert_as_a_clinician_sees_it():
    answer, _ = cite_results(parse_question("Is the heart size normal?", ["DX"], EXPERTS), "", [CXR],
                             titles={"cxr_classification": "Chest X-ray findings"})
    assert answer.endswith("Source: Chest X-ray findings result.") and "cxr_classification" not in answer


def test_a_report_after_a_run_without_the_lesions_asks_the_expert_for_the_whole_study_once():
    from types import SimpleNamespace

    from experts.registry import default_registry
    from vlm.grounding import planned_call

    experts = {"ct_segmentation": default_registry().get("ct_segmentation")}
    intent = parse_question("give me a summary of the findings", ["CT"], EXPERTS)
    organs_only = SimpleNamespace(name="ct_segmentation", arguments={"targets": "organs"}, result=object())
    assert planned_call(intent, experts, []) == ("ct_segmentation", {})
    assert planned_call(intent, experts, [organs_only]) == ("ct_segmentation", {"targets": "everything"})
    whole = SimpleNamespace(name="ct_segmentation", arguments={}, result=object())
    assert planned_call(intent, experts, [organs_only, whole]) is None
    lesions = SimpleNamespace(name="ct_segmentation", arguments={"targets": "lesions"}, result=object())
    assert planned_call(intent, experts, [lesions]) is None  # every finding a report states is in a lesions run
    # a question naming its structure is not sent back for the whole study
    assert planned_call(parse_question("liver volume?", ["CT"], EXPERTS), experts, [organs_only]) is None


def test_a_result_another_result_of_the_turn_holds_is_said_once_in_a_report():
    intent = parse_question("Draft a report for this CT.", ["CT"], EXPERTS)
    organs = "CT segmentation: left kidney 150 mL; right kidney 121 mL."
    whole = "CT segmentation: 2 kidney cysts (largest 14 mm, left); left kidney 150 mL; right kidney 121 mL."
    answer, _ = cite_results(intent, "", [CT], [organs, whole])
    assert whole in answer and organs not in answer


def test_a_radiograph_finding_asked_by_size_is_answered_by_its_presence_when_the_model_wrote_about_another():
    intent = parse_question("How big is the cardiomegaly?", ["DX"], EXPERTS)
    answer, _ = cite_results(intent, "Pneumothorax: absent.", [CXR])
    assert "cardiomegaly" in answer.lower() and "0.87" in answer and "no size" in answer.lower()
    assert "pneumothorax" not in answer.lower()
    assert cite_results(intent, "Large.", [CXR])[0].startswith("Large.")  # the model's reading of the picture stands


def test_anything_abnormal_is_answered_yes_abnormal_and_a_model_no_against_it_is_corrected():
    intent = parse_question("any abnormality?", ["DX"], EXPERTS)
    answer, _ = cite_results(intent, "", [CXR])
    assert answer.startswith("Yes, abnormal: cardiomegaly")
    corrected, flags = cite_results(intent, "No, the film is normal.", [CXR])
    assert corrected.startswith("Yes") and "answer corrected to the expert result" in flags


def test_a_negatively_put_question_is_answered_by_the_findings_state_not_a_bare_yes_or_no():
    assert cite_results(parse_question("No pneumothorax?", ["DX"], EXPERTS), "", [CXR])[0].startswith("Pneumothorax absent (probability 0.03)")
    assert cite_results(parse_question("no cardiomegaly, right?", ["DX"], EXPERTS), "", [CXR])[0].startswith("Cardiomegaly present")


def test_free_of_nothing_wrong_and_negative_ask_whether_it_is_normal():
    assert cite_results(parse_question("Is the film negative for pneumothorax?", ["DX"], EXPERTS), "", [CXR])[0].startswith("Yes, normal")
    for question in ("Is the liver free of lesions?", "nothing wrong with the kidneys?", "no acute findings?"):
        intent = parse_question(question, ["CT"], EXPERTS)
        assert (intent.family, intent.asks_normal) == ("normality", True), question


def test_kidneys_measured_by_two_calls_are_still_compared_by_their_volumes():
    left = format_tool_result(ToolResult("ct_segmentation", measurements=[Measurement("left kidney", "volume", 150.2, "mL")]))
    right = format_tool_result(ToolResult("ct_segmentation", measurements=[Measurement("right kidney", "volume", 120.9, "mL")]))
    answer, _ = cite_results(parse_question("Which kidney is bigger?", ["CT"], EXPERTS), "The aorta is 140 mL.", [right, left])
    assert answer.startswith("The left kidney is larger than the right kidney (150.2 mL vs 120.9 mL).")


def test_how_many_abnormalities_is_answered_with_the_number_first():
    answer, _ = cite_results(parse_question("What number of abnormal findings do you see?", ["DX"], EXPERTS), "", [CXR])
    assert answer.startswith("1 abnormal finding: cardiomegaly")


def test_a_modality_question_offering_options_is_answered_with_the_option_and_a_yes_no_one_with_yes_or_no():
    ct = {"a": Volume(np.zeros((4, 4, 3)), np.eye(4), modality="CT")}
    assert header_answer(parse_question("Is this image a CT or an MRI?", ["CT"]), ct).startswith("CT — this study is a CT")
    assert header_answer(parse_question("Is this a CT?", ["CT"]), ct).startswith("Yes, this study is a CT")
    assert header_answer(parse_question("is this a chest x-ray", ["CT"]), ct).startswith("No, this study is a CT")


def test_a_normality_answer_that_only_copies_the_field_is_said_as_a_verdict():
    intent = parse_question("Is the CT normal?", ["CT"], EXPERTS)
    answer, flags = cite_results(intent, "no (kidney cyst) Organ volumes: none found.", [CT])
    assert answer.startswith("No, not normal:") and "Organ volumes" not in answer
