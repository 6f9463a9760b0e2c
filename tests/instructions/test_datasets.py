"""Training data from phantoms: valid LLaVA records, answers true to the picture, tool turns equal to
``tool_message`` of results built from ground truth, held-out splits, many phrasings."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data.instructions import build_datasets, expert_dialogue, make_view, tool_result_from_truth
from data.instructions.expert_dialogues import CT_TARGETS, format_tool_call
from data.tool_text import resolve_references
from data.phantoms import generate
from data.phantoms.labels import CT_LABELS, CT_ORGANS
from experts.base import tool_message

COUNTS = {"ct": 14, "mri": 5, "cxr": 14}
SMALL_MRI = {"mri": {"shape": (64, 64, 32)}}
CT_VALUE = {v: k for k, v in CT_LABELS.items()}
ORGANS = [CT_LABELS[v] for v in CT_ORGANS]


@functools.lru_cache(maxsize=None)
def _case(kind: str, seed: int):
    return generate(kind, seed)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("instr")
    paths = build_datasets(COUNTS, out, seed=0, split="train", phantom_options=SMALL_MRI)
    data = {stage: json.loads(p.read_text()) for stage, p in paths.items()}
    return out, data


def test_records_are_valid_llava(built):
    out, data = built
    ids = [r["id"] for recs in data.values() for r in recs]
    assert len(ids) == len(set(ids))
    template = [r for r in data["medical-ift"] if r["meta"]["task"] != "clinician"]
    assert len(data["align"]) == sum(COUNTS.values()) == len(template)
    assert len(data["medical-ift"]) - len(template) == 4 * sum(COUNTS.values())  # ClinicianMix().per_case clinician questions a case
    assert len(data["ift"]) >= 3 * sum(COUNTS.values())
    for recs in data.values():
        for r in recs:
            images = r["images"] if "images" in r else [r["image"]]
            assert len(images) == (4 if r["meta"]["kind"] == "mri" else 1)
            for rel in images:
                with Image.open(out / rel) as im:
                    assert im.mode == "L" and min(im.size) >= 64
            conv = r["conversations"]
            assert conv[0]["from"] == "human" and conv[0]["value"].count("<image>") == len(images)
            assert sum(t["value"].count("<image>") for t in conv) == len(images)
            assert conv[-1]["from"] == "gpt" and all(t["from"] in ("human", "gpt", "tool") for t in conv)
            for a, b in zip(conv, conv[1:]):
                assert a["from"] != b["from"]
                if b["from"] == "tool":
                    assert a["from"] == "gpt" and a["value"].startswith("<tool_call>")


def test_same_seed_same_files_and_splits_are_disjoint(built, tmp_path):
    _, data = built
    again = build_datasets({"ct": 3, "cxr": 3}, tmp_path / "a", seed=0, stages=("ift",), split="train")
    again2 = build_datasets({"ct": 3, "cxr": 3}, tmp_path / "b", seed=0, stages=("ift",), split="train")
    assert again["ift"].read_text() == again2["ift"].read_text()
    first = json.loads(again["ift"].read_text())
    assert [r["id"] for r in first] == [r["id"] for r in data["ift"] if r["meta"]["kind"] in ("ct", "cxr") and (r["meta"]["seed"] - 100_000) % 3000 < 3]
    test = build_datasets({"ct": 3, "cxr": 3}, tmp_path / "c", seed=0, stages=("align",), split="test")
    train_seeds = {r["meta"]["seed"] for r in data["align"]}
    test_seeds = {r["meta"]["seed"] for r in json.loads(test["align"].read_text())}
    assert train_seeds.isdisjoint(test_seeds) and len(test_seeds) == 6


def test_ct_answers_are_true_to_the_slice(built):
    from data.slice_facts import asks_about_shown_slice  # a question about the whole study is the expert's

    _, data = built
    checked = 0
    for r in data["ift"]:
        m = r["meta"]
        if m["kind"] != "ct" or m["category"] not in ("presence", "count"):
            continue
        q = r["conversations"][0]["value"].lower()
        labels = _case("ct", m["seed"]).labels[:, :, m["slice_index"]]
        lesion = next((t for t in ("liver", "lung", "kidney", "renal", "hepatic", "pulmonary") if t in q), None)
        if m["category"] == "presence" and asks_about_shown_slice(q) and lesion and ("tumo" in q or "nodul" in q or "cyst" in q or "mass" in q or "lesion" in q) and "visible" not in q and "included" not in q and "shown" not in q:
            value = {"liver": 10, "hepatic": 10, "lung": 11, "pulmonary": 11, "kidney": 12, "renal": 12}[lesion]
            assert (m["answer"] == "yes") == bool((labels == value).sum() >= 4), q
            checked += 1
        if m["category"] == "count" and m["answer"] == "0":
            assert not np.isin(labels, [10, 11, 12]).any()
            checked += 1
    assert checked >= 4


def test_organ_visibility_questions_are_true_to_the_slice_and_balanced():
    from data.instructions.vqa import _ct

    answers = []
    for seed in range(6):
        case = _case("ct", seed)
        for j in range(6):
            rng = np.random.default_rng(100 * seed + j)
            view = make_view(case, rng)
            for qa in _ct(view, rng):
                q = qa.question.lower()
                organ = next((o for o in sorted(ORGANS, key=len, reverse=True) if f"the {o} " in q), None)
                if qa.category != "presence" or organ is None:
                    continue
                area = int((case.labels[:, :, view.slice_index] == CT_VALUE[organ]).sum())
                assert (qa.answer == "no") == (area == 0), (q, area)  # never asked of an organ the slice only grazes
                answers.append(qa.answer)
    assert len(answers) >= 20
    assert 0.3 <= answers.count("yes") / len(answers) <= 0.7  # a cut organ or an absent one, half the time each


def test_vqa_covers_categories_balances_yes_no_and_varies_phrasing(built):
    _, data = built
    metas = [r["meta"] for r in data["ift"]]
    cats = Counter(m["category"] for m in metas)
    assert {"presence", "location", "laterality", "count", "size", "modality", "region", "comparison"} <= set(cats)
    yn = [m["answer"] for m in metas if m["answer"] in ("yes", "no")]
    assert 0.3 <= yn.count("yes") / len(yn) <= 0.7
    assert {m["answer_type"] for m in metas} == {"closed", "open"}
    presence = [r["conversations"][0]["value"] for r in data["ift"] if r["meta"]["category"] == "presence"]
    assert len(set(presence)) >= 0.8 * len(presence)
    for recs in data.values():
        for r in recs:
            for t in r["conversations"]:
                if t["from"] == "human":
                    # a question mark may open a word in shorthand ("?pneumothorax", "cyst ?L ?R"), never stand alone
                    assert not re.search(r"[{}|]|<(?!image>)\w+>|\b(a an|an a|a a)\b|\s(?:[.,]|\?(?!\w))", t["value"]), t["value"]


def test_captions_name_the_findings_in_the_picture(built):
    _, data = built
    for r in data["align"]:
        text = r["conversations"][1]["value"]
        assert "Findings:" in text and "Impression:" in text
        m = r["meta"]
        if m["kind"] == "ct":  # the caption names the slice's lesions; a report must name the study's
            case = _case("ct", m["seed"])
            labels = case.labels[:, :, m["slice_index"]]
            for name in ("liver tumor", "lung nodule", "kidney cyst"):
                if name in m["picture_findings"]:
                    assert (labels == CT_VALUE[name]).any()
                assert (name in m["findings"]) == (case.truth["lesion_counts"][name] > 0)
            assert set(m["picture_findings"]) <= set(m["findings"])
        if m["kind"] == "cxr":
            truth = _case("cxr", m["seed"]).truth
            assert set(m["findings"]) == set(truth["labels"])
            assert ("enlarged" in text) == truth["findings"]["cardiomegaly"]


@pytest.mark.parametrize("kind", ["ct", "mri", "cxr"])
def test_tool_turn_is_tool_message_of_ground_truth_and_answer_quotes_it(kind):
    opts = SMALL_MRI.get(kind, {})
    seen = 0
    for seed in range(12):
        case = generate(kind, seed, **opts)
        rng = np.random.default_rng(seed)
        d = expert_dialogue(make_view(case, rng), rng)
        tools = [i for i, t in enumerate(d.turns) if t["from"] == "tool"]
        if d.task == "no-expert":
            assert not tools and not any("<tool_call>" in t["value"] for t in d.turns)
            continue
        assert len(tools) == 1 == len(d.results)  # follow-ups never call again
        i = tools[0]
        assert d.turns[i]["value"] == tool_message(d.results[0])
        call = d.tool_calls[0]
        assert d.turns[i - 1]["value"] == format_tool_call(call["name"], call["arguments"])
        answers = " ".join(t["value"] for t in d.turns[i + 1:] if t["from"] == "gpt")
        assert not any(ch.isdigit() for ch in answers)  # answers name fields; the agent fills in the numbers
        resolved, missing = resolve_references(answers, [d.turns[i]["value"]])
        assert not missing and "[[" not in resolved
        for value in d.grounded_values:
            assert value in resolved and value in d.turns[i]["value"]
        body = json.loads(d.turns[i]["value"])
        truth = case.truth
        if kind == "ct":
            targets = call["arguments"]["targets"]
            assert targets in CT_TARGETS
            for line in body.get("measurements", []):
                name, rest = line.split(" volume: ") if " volume: " in line else (None, None)
                if name in truth["organ_volumes_ml"]:
                    assert float(rest.split()[0]) == pytest.approx(truth["organ_volumes_ml"][name], abs=0.05)
                if " count: " in line:
                    lesion, n = line.split(" count: ")
                    assert int(n) == truth["lesion_counts"][lesion]
        elif kind == "mri":
            assert call == {"name": "mri_brain_tumor", "arguments": {}}
            assert f"whole tumor volume: {truth['whole_tumor_ml']:.1f} mL" in body["measurements"]
        else:
            assert call == {"name": "cxr_classification", "arguments": {}}
            assert {k: v.startswith("yes") for k, v in body["findings"].items()} == truth["findings"]
        seen += 1
    assert seen >= 6


def test_brain_tumour_follow_ups_ask_each_sub_region_and_answer_from_the_result():
    asked = Counter()
    for seed in range(40):
        case = generate("mri", seed, **SMALL_MRI["mri"])
        rng = np.random.default_rng(seed)
        d = expert_dialogue(make_view(case, rng), rng)
        humans = [i for i, t in enumerate(d.turns) if t["from"] == "human"]
        if d.task == "no-expert" or len(humans) < 2:
            continue
        q = d.turns[humans[1]]["value"].lower()
        answer, _ = resolve_references(d.turns[humans[1] + 1]["value"], [t["value"] for t in d.turns if t["from"] == "tool"])
        sub = case.truth["subregion_volumes_ml"]
        for word, region in (("necro", "necrotic core"), ("edema", "edema")):
            if word in q:
                asked[region] += 1
                assert answer.lower().startswith(("necrosis:", "edema:")), answer
                assert ("not present" in answer) == (sub[region] == 0), (q, answer)
                assert f"{sub[region]:.1f} mL" in answer
    assert asked["necrotic core"] >= 2 and asked["edema"] >= 2


def test_training_templates_match_the_expert_and_agent_contracts():
    from experts.ct_segmentation import TARGET_CHOICES
    from vlm.tools import format_tool_call as agent_format

    assert CT_TARGETS == TARGET_CHOICES
    args = {"targets": "liver tumor"}
    assert format_tool_call("ct_segmentation", args) == agent_format("ct_segmentation", args)
    case = generate("ct", 2)
    result = tool_result_from_truth("ct", case.truth, {"targets": "everything"}, np.random.default_rng(0))
    assert [m.structure for m in result.measurements if m.quantity == "volume" and m.structure in case.truth["organ_volumes_ml"]] == \
        [CT_LABELS[v] for v in range(1, 10)]


def test_radiograph_report_requests_are_written_with_the_classifier():
    """A report request on a radiograph calls the classifier; the filled-in report states exactly the
    classifier's findings (here the phantom's truth), so the finding F1 of such reports is the expert's."""
    from vlm.eval.metrics import extract_findings
    from vlm.eval.report import FINDING_VOCABULARY

    reports = 0
    for seed in range(40):
        case = _case("cxr", seed)
        rng = np.random.default_rng(seed)
        d = expert_dialogue(make_view(case, rng), rng)
        if not d.turns[-1]["value"].startswith("Findings:"):
            continue
        reports += 1
        assert d.tool_calls == [{"name": "cxr_classification", "arguments": {}}] and len(d.turns) == 4
        text, missing = resolve_references(d.turns[-1]["value"], [d.turns[2]["value"]])
        assert not missing
        assert extract_findings(text, FINDING_VOCABULARY["cxr"]) == {k for k, on in case.truth["findings"].items() if on}
    assert 5 <= reports <= 25


def test_ct_report_requests_are_written_with_the_segmentation_expert():
    """A report request on a CT calls the segmentation expert on the study's lesions; the filled-in report
    states exactly the study's lesion types (``study_findings``), also those the shown slice misses."""
    from data.instructions import study_findings
    from vlm.eval.metrics import extract_findings
    from vlm.eval.report import FINDING_VOCABULARY

    reports, beyond_slice = 0, 0
    for seed in range(40):
        case = _case("ct", seed)
        rng = np.random.default_rng(seed)
        view = make_view(case, rng)
        d = expert_dialogue(view, rng)
        if not d.turns[-1]["value"].startswith("Findings:"):
            continue
        reports += 1
        assert d.tool_calls == [{"name": "ct_segmentation", "arguments": {"targets": "lesions"}}] and len(d.turns) == 4
        assert d.turns[0]["value"] and "[[" not in d.turns[0]["value"]
        text, missing = resolve_references(d.turns[-1]["value"], [d.turns[2]["value"]])
        assert not missing
        assert extract_findings(text, FINDING_VOCABULARY["ct"]) == set(study_findings(view)) == \
            {k for k, n in case.truth["lesion_counts"].items() if n}
        beyond_slice += set(study_findings(view)) != {les["type"] for les in view.facts["lesions"]}
    assert 5 <= reports <= 20 and beyond_slice


def test_questions_an_expert_answers_call_it_and_name_the_answering_field(built):
    """Radiograph finding questions go through the classifier, brain-tumour questions through the tumour
    expert, CT lesion presence in the study through the segmentation expert (targets: that lesion), the
    contrast phase through it too (read from the aorta); whether the slice on screen shows a structure, and
    the size or side of a lesion it shows, through the expert's mask on that slice (``[[spleen in this slice?]]``,
    ``[[liver tumor in this slice size]]``). Every resolved answer agrees
    with the reference; the tool turn holds "in this slice" findings exactly when the question asks about
    the slice on screen."""
    from data.slice_facts import asks_about_shown_slice
    from vlm.eval.metrics import closed_match

    _, data = built
    routed = [r for r in data["ift"] if "tool_calls" in r["meta"]]
    by_kind = Counter((r["meta"]["kind"], r["meta"]["category"]) for r in routed)
    assert by_kind[("cxr", "presence")] and by_kind[("cxr", "heart size")] and by_kind[("mri", "presence")] and by_kind[("ct", "presence")]
    assert all(r["meta"]["answer_type"] == "closed" for r in routed)
    assert {r["meta"]["category"] for r in routed if r["meta"]["kind"] == "ct"} == {"phase", "presence", "size", "laterality"}
    assert ("mri", "size") in by_kind
    for r in routed:
        if r["meta"]["kind"] == "ct":  # the phase from the aorta; a structure is asked with that structure as the target
            targets = r["meta"]["tool_calls"][0]["arguments"]["targets"]
            on_slice = " in this slice" if asks_about_shown_slice(r["conversations"][0]["value"]) else ""
            asked = {"size": " size", "laterality": " side"}.get(r["meta"]["category"], "?")
            assert targets == "aorta" if r["meta"]["category"] == "phase" else r["conversations"][3]["value"] == f"[[{targets}{on_slice}{asked}]]"
    for r in routed:
        human, call, tool, answer = r["conversations"]
        name = r["meta"]["tool_calls"][0]["name"]
        assert call["value"] == format_tool_call(name, r["meta"]["tool_calls"][0]["arguments"]) and json.loads(tool["value"])["expert"] == name
        assert re.fullmatch(r"\[\[[a-z ]+\??\]\]", answer["value"])
        text, missing = resolve_references(answer["value"], [tool["value"]])
        assert missing == [] and closed_match(text, r["meta"]["answer"]), (human["value"], text, r["meta"]["answer"])
        assert ("in this slice" in tool["value"]) == (asks_about_shown_slice(human["value"]) and r["meta"]["kind"] != "cxr")
    slice_questions = [r for r in data["ift"] if r["meta"]["kind"] != "cxr" and asks_about_shown_slice(r["conversations"][0]["value"])]
    assert slice_questions and all(r in routed and re.search(r"in this slice(\?| size| side)\]\]$", r["conversations"][-1]["value"]) for r in slice_questions)
    # picture questions stay picture questions
    assert any(r["meta"]["kind"] == "cxr" and r["meta"]["category"] == "laterality" and len(r["conversations"]) == 2 for r in data["ift"])
