"""``m3 ask``: a site's question file asked through the app's path, one JSON line per answer; a bad file fails
before any model loads, naming the line."""

from __future__ import annotations

import json

import pytest

from vlm.ask import AskError, load_questions


def test_m3_ask_writes_one_line_per_question_with_calls_results_and_checks(tmp_path):
    from app.main import main
    from data.phantoms import DICOM_DIRNAME, generate, write_study

    case = generate("ct", 7)
    study = write_study(case, tmp_path / "study")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("# acceptance list\n" + "\n".join(json.dumps(q) for q in [
        {"id": "liver", "question": "What is the liver volume?", "expect_expert": "ct_segmentation", "expect": "mL"},
        {"id": "here", "question": "Is the liver shown in this slice?", "slice": 32, "plane": "axial"},
    ]) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["ask", str(study / DICOM_DIRNAME), "--questions", str(questions), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["liver", "here"] and lines[1]["slice"] == 32
    liver = lines[0]
    call = liver["tool_calls"][0]
    assert call["name"] == "ct_segmentation" and call["error"] is None and liver["passed"] is True
    measured = {f"{m['structure']} {m['quantity']}": m["value"] for m in call["result"]["measurements"]}
    assert abs(measured["liver volume"] - case.truth["organ_volumes_ml"]["liver"]) < 0.1 * case.truth["organ_volumes_ml"]["liver"]
    assert f"{measured['liver volume']:.1f}" in liver["answer"] and liver["seconds"] > 0


@pytest.mark.parametrize("text,message", [
    ("not json\n", "line 1: expected one JSON object per line"),
    ('{"q": "x"}\n', 'line 1: each line must be an object with a non-empty "question"'),
    ('{"question": "x", "colour": 1}\n', "unknown key(s) ['colour']"),
    ('{"question": "x", "plane": "oblique"}\n', "plane must be one of"),
    ('{"question": "x", "slice": 0}\n', "slice must be a whole number >= 1"),
    ("\n# nothing\n", "holds no questions"),
])
def test_a_bad_question_file_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "q.jsonl"
    path.write_text(text)
    with pytest.raises(AskError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_questions(path)
