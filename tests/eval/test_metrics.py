"""Scorers behave as the VQA / report / tool-call protocols define them."""

from vlm.eval.metrics import (
    bleu4,
    closed_match,
    extract_findings,
    finding_f1,
    is_grounded,
    open_recall,
    rouge_l,
    tool_call_scores,
)

VOCAB = {"pleural effusion": ["pleural effusion", "effusion"], "nodule": ["nodule"], "cardiomegaly": ["cardiomegaly", "enlarged heart"]}


def test_closed_match_uses_first_yes_no_word():
    assert closed_match("Yes, there is a nodule.", "yes")
    assert not closed_match("No. Yes would be wrong.", "yes")
    assert closed_match("The Liver", "liver")
    assert not closed_match("spleen", "liver")


def test_open_recall_counts_reference_words():
    assert open_recall("a lesion in the left kidney", "left kidney") == 1.0
    assert open_recall("right kidney", "left kidney") == 0.5


def test_bleu_and_rouge_rank_a_close_report_above_a_wrong_one():
    ref = ["Small left pleural effusion. No nodule."]
    assert bleu4(ref, ref) > 99
    assert rouge_l(["Small left pleural effusion."], ref) > rouge_l(["Normal heart size."], ref)


def test_findings_respect_negation():
    got = extract_findings("Enlarged heart. No pleural effusion. A 9 mm nodule in the right upper lobe.", VOCAB)
    assert got == {"cardiomegaly", "nodule"}
    scores = finding_f1([got], [{"cardiomegaly", "pleural effusion"}])
    assert abs(scores["precision"] - 0.5) < 1e-9 and abs(scores["recall"] - 0.5) < 1e-9
    # a decimal point does not end the sentence (and so the negation's reach)
    assert extract_findings("Absent: enlarged heart (0.12), nodule (0.03); pleural effusion (0.91).", VOCAB) == {"pleural effusion"}


def test_tool_call_scores_need_name_and_arguments():
    pred = [[("ct_segmentation", {"targets": "liver tumor"})], [("cxr_classification", {})]]
    exp = [[("ct_segmentation", {"targets": "organs"})], [("cxr_classification", {})]]
    s = tool_call_scores(pred, exp)
    assert s.precision == 0.5 and s.recall == 0.5 and s.name_precision == 1.0


def test_grounding_checks_every_number():
    tool = ['{"measurements": ["liver volume: 1523.4 mL", "liver tumor count: 2"]}']
    assert is_grounded("The liver measures 1523.4 mL with 2 tumors.", tool)
    assert not is_grounded("The liver measures 1800 mL.", tool)
    assert is_grounded("No measurement was needed.", tool)


def test_a_closed_answer_followed_by_a_line_break_still_counts():
    from vlm.eval.metrics import closed_match

    assert closed_match("Liver in this slice: yes.\n\nSource: CT segmentation result.", "yes")
    assert closed_match("Left.\nThe cyst is on the left.", "left")
