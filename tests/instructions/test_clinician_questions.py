"""Clinician-style questions in the training data: every intent family asked in many styles and words, each answered by
the expert call naming what was asked and a short answer whose field references the tool message fills, in the
question's own form (normality, either-or, comparison, negation); deterministic for a seed; far more varied than the
template generators."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from data.instructions import build_datasets, clinician_dialogue, expert_dialogue, make_view, vqa_items
from data.instructions.clinician_questions import FAMILIES, ClinicianMix, ClinicianQuestionError, draw_question, normalised_question
from data.instructions.question_noise import NoiseConfig, add_noise, typo
from data.lexicon import find_terms
from data.phantoms import generate
from data.phantoms.labels import CT_TARGETS
from data.slice_facts import asks_about_shown_slice
from data.tool_text import UNRESOLVED, format_tool_call, resolve_references

SMALL_MRI = {"shape": (64, 64, 32)}
EXPERTS = {"ct": "ct_segmentation", "mri": "mri_brain_tumor", "cxr": "cxr_classification"}


@functools.lru_cache(maxsize=None)
def _views() -> tuple:
    views = []
    for kind, seeds in (("ct", (402, 403, 404)), ("mri", (11, 12)), ("cxr", (21, 22, 23))):
        for seed in seeds:
            case = generate(kind, seed, **(SMALL_MRI if kind == "mri" else {}))
            views.append(make_view(case, np.random.default_rng([seed, 0x71E])))
    return tuple(views)


@functools.lru_cache(maxsize=None)
def _dialogues(n: int = 1500) -> tuple:
    views = _views()
    return tuple((views[i % len(views)], clinician_dialogue(views[i % len(views)], np.random.default_rng([i, 9]))) for i in range(n))


def _resolved(d) -> str:
    tools = [t["value"] for t in d.turns if t["from"] == "tool"]
    text, missing = resolve_references(d.turns[-1]["value"], tools)
    assert not missing and UNRESOLVED not in text, (d.turns[0]["value"], d.turns[-1]["value"], tools)
    return text


def test_every_answer_names_fields_its_own_tool_message_holds():
    for view, d in _dialogues():
        human, call, tool, answer = d.turns
        assert [t["from"] for t in d.turns] == ["human", "gpt", "tool", "gpt"]
        assert d.tool_calls == [{"name": EXPERTS[view.kind], "arguments": d.tool_calls[0]["arguments"]}]
        assert call["value"] == format_tool_call(EXPERTS[view.kind], d.tool_calls[0]["arguments"])
        assert json.loads(tool["value"])["expert"] == EXPERTS[view.kind]
        if view.kind == "ct":
            assert d.tool_calls[0]["arguments"]["targets"] in CT_TARGETS
        else:
            assert d.tool_calls[0]["arguments"] == {}
        assert "[[" in answer["value"] or "contrast phase is not" in answer["value"]
        _resolved(d)
        if d.info["family"] not in ("report", "run expert", "segment everything", "multi-part", "normality"):
            assert len(answer["value"]) < 90, answer["value"]  # short: the model is small, its context ~2k tokens


def test_every_intent_family_is_asked_in_every_style():
    families = Counter(d.info["family"] for _, d in _dialogues())
    assert set(families) == set(FAMILIES), set(FAMILIES) - set(families)
    assert min(families.values()) >= 15, families
    styles = Counter(d.info["style"].split("+")[0] for _, d in _dialogues())
    assert {"question", "terse", "fragment", "shorthand", "multi-and", "multi-sentences"} <= set(styles)
    noise = Counter(n for _, d in _dialogues() for n in d.info["style"].split("+")[1:])
    assert {"lower", "typo", "lead-in", "filler", "no-mark", "british"} <= set(noise)
    by_kind = {k: {d.info["family"] for v, d in _dialogues() if v.kind == k} for k in EXPERTS}
    assert {"count", "comparison", "organ volume", "contrast phase", "side (slice)"} <= by_kind["ct"]
    assert {"tumour volume", "side (study)", "presence (slice)", "report"} <= by_kind["mri"]
    assert {"likelihood", "negation", "normality", "either-or"} <= by_kind["cxr"]


def test_slice_findings_come_exactly_with_questions_the_agent_reads_as_about_the_slice():
    for view, d in _dialogues():
        if view.kind != "cxr":
            assert ("in this slice" in d.turns[2]["value"]) == asks_about_shown_slice(d.turns[0]["value"])
            if d.info["intents"][0].endswith("_slice") and view.kind == "ct":
                assert "in this slice" in d.turns[3]["value"]


def _one(view, intent: str, seed: int):
    return clinician_dialogue(view, np.random.default_rng([seed, 17]), intent=intent)


def test_normality_questions_are_answered_in_their_own_polarity():
    cxr = [v for v in _views() if v.kind == "cxr"]
    for i in range(60):
        view = cxr[i % len(cxr)]
        d = _one(view, "normal", i)
        key = re.search(r"\[\[(.+) normal\?\]\]", d.turns[3]["value"]).group(1)
        text = _resolved(d)
        assert text.startswith("Normal: " + ("no" if view.truth["findings"][key] else "yes")), (d.turns[0]["value"], text)
        d = _one(view, "normal_study", i)
        assert _resolved(d).startswith("Normal: " + ("no" if any(view.truth["findings"].values()) else "yes"))


def test_comparisons_name_the_larger_or_smaller_organ_the_question_asks_for():
    ct = [v for v in _views() if v.kind == "ct" and v.truth["organ_volumes_ml"]["left kidney"] > 0]
    assert ct
    asked = Counter()
    for i in range(80):
        view = ct[i % len(ct)]
        d = _one(view, "comparison", i)
        m = re.search(r"\[\[(larger|smaller) (kidney|lung)\]\]", d.turns[3]["value"])
        assert m, d.turns[3]["value"]
        word, organ = m.groups()
        asked[word] += 1
        words = re.findall(r"[a-z]+", d.turns[0]["value"].lower())  # "smaller" perhaps with a typo
        assert any(Levenshtein.distance(w, "smaller") <= 2 for w in words) == (word == "smaller"), d.turns[0]["value"]
        vols = {s: view.truth["organ_volumes_ml"][f"{s} {organ}"] for s in ("left", "right")}
        expected = max(vols, key=vols.get) if word == "larger" else min(vols, key=vols.get)
        assert f"the {expected} {organ}" in _resolved(d)
    assert asked["larger"] and asked["smaller"]


def test_either_or_side_and_phase_questions_name_the_option():
    for view in _views():
        if view.kind == "cxr":
            continue
        for i in range(15):
            d = _one(view, "either_side", i)
            text = _resolved(d)
            lesion = d.turns[3]["value"].split(":")[0].lower().removesuffix(" in this slice").removesuffix(" side").removesuffix("s")
            shown = view.kind == "mri" or "in this slice" in d.turns[3]["value"]
            if shown or lesion in ("tumor",) or view.truth["lesion_counts"].get(lesion, 0):
                assert re.search(r"\b(left|right)\b|: no\.|not present", text), (d.turns[0]["value"], text)
            else:
                assert "none found" in text, (d.turns[0]["value"], text)
            if view.kind == "ct":
                d = _one(view, "either_phase", i)
                assert _resolved(d) == f"Contrast phase: {view.truth['phase']} phase."


def test_negated_questions_get_a_statement_of_the_finding_and_counts_the_number():
    for view in _views():
        for i in range(10):
            d = _one(view, "negation", i)
            ref = re.search(r"\[\[([^\]]+)\]\]", d.turns[3]["value"]).group(1)
            assert not ref.endswith("?")  # a statement ("not present (probability 0.12)"), not a bare yes / no
            assert re.search(r"present|found", _resolved(d))
            if view.kind == "ct":
                d = _one(view, "count", i)
                lesion = re.search(r"\[\[(.+) count\]\]", d.turns[3]["value"]).group(1)
                assert _resolved(d).endswith(f": {view.truth['lesion_counts'][lesion]}.")


def test_same_seed_same_records_and_clinician_share_is_configurable(tmp_path):
    kinds = {"cxr": 3, "ct": 1}
    a = build_datasets(kinds, tmp_path / "a", seed=0, stages=("medical-ift",))["medical-ift"]
    b = build_datasets(kinds, tmp_path / "b", seed=0, stages=("medical-ift",))["medical-ift"]
    assert a.read_text() == b.read_text()
    records = json.loads(a.read_text())
    assert Counter(r["meta"]["task"] == "clinician" for r in records) == {True: 16, False: 4}
    none = build_datasets(kinds, tmp_path / "c", seed=0, stages=("medical-ift",), clinician=ClinicianMix(per_case=0))["medical-ift"]
    assert json.loads(none.read_text()) == [r for r in records if r["meta"]["task"] != "clinician"]  # the template records unchanged
    test = build_datasets(kinds, tmp_path / "d", seed=0, stages=("medical-ift",), split="test")["medical-ift"]
    assert all(r["meta"]["task"] != "clinician" for r in json.loads(test.read_text()))


def _distinct(n: int) -> tuple[int, int]:
    """Distinct normalised questions among ``n`` of the template generators (VQA and expert conversations, alternately)
    and among ``n`` clinician-style ones, over the same cases."""
    views = _views()
    template, clinician = set(), set()
    for i in range(n):
        view, rng = views[i % len(views)], np.random.default_rng([i, 1])
        template.add(normalised_question(vqa_items(view, rng, 1)[0].question if i % 2 else expert_dialogue(view, rng).turns[0]["value"]))
        clinician.add(normalised_question(draw_question(view.kind, np.random.default_rng([i, 2])).text))
    return len(template), len(clinician)


def test_clinician_questions_are_far_more_varied_than_the_template_generators():
    template, clinician = _distinct(2500)
    assert clinician >= 0.9 * 2500 and clinician >= 1.45 * template, (clinician, template)


@pytest.mark.slow
def test_clinician_questions_keep_growing_where_the_templates_saturate():
    template, clinician = _distinct(20_000)  # measured: 6365 template, 17167 clinician
    assert clinician >= 2.5 * template, (clinician, template)


def test_typos_keep_the_finding_readable_by_the_lexicon():
    rng = np.random.default_rng(0)
    for name, key in (("pneumothorax", "pneumothorax"), ("renal cyst", "kidney cyst"), ("pleural effusion", "pleural effusion"),
                      ("cardiomegaly", "cardiomegaly")):
        for _ in range(30):
            text = typo(f"any {name}?", rng)
            assert text != f"any {name}?" and text.startswith("any ") and text[4] == name[0]
            assert key in {m.key for m in find_terms(text)}, text
    assert typo("is it big", rng) == "is it big"  # no word of five letters


def test_noise_probabilities_are_checked_and_zero_noise_keeps_the_text():
    with pytest.raises(ClinicianQuestionError, match="typo must be a probability"):
        NoiseConfig(typo=1.5)
    quiet = NoiseConfig(**{k: 0.0 for k in vars(NoiseConfig())})
    assert add_noise("Is there a pneumothorax?", np.random.default_rng(1), quiet) == ("Is there a pneumothorax?", [])
