"""The held-out phrasing scorer on hand-made answers: a right answer scores 1, a wrong side, volume, polarity or
phase 0, a refusal that called an expert 0; and the runner asks each phrasing on a phantom study the app's way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlm.backends.base import BackendInfo
from vlm.eval.phrasings import (
    INTENTS,
    ask_phrasings,
    load_phrasing_set,
    score_item,
    score_phrasing_answers,
)

SET_PATH = Path(__file__).resolve().parents[1] / "data" / "heldout_phrasings.jsonl"

CT = {"kind": "ct", "phase": "portal venous",
      "organ_volumes_ml": {"liver": 1065.7, "spleen": 109.9, "left kidney": 115.4, "right kidney": 126.1, "left lung": 252.2,
                           "right lung": 189.2, "heart": 17.0, "aorta": 89.0, "spine": 282.6},
      "organs_present": ["liver", "spleen", "left kidney", "right kidney", "left lung", "right lung", "heart", "aorta", "spine"],
      "lesions": [{"type": "liver tumor", "organ": "liver", "max_diameter_mm": 22.8},
                  {"type": "kidney cyst", "organ": "right kidney", "max_diameter_mm": 18.1},
                  {"type": "kidney cyst", "organ": "left kidney", "max_diameter_mm": 14.0}],
      "lesion_counts": {"liver tumor": 1, "lung nodule": 0, "kidney cyst": 2},
      "lesion_volumes_ml": {"liver tumor": 5.7, "lung nodule": 0.0, "kidney cyst": 3.7},
      "series": [{"description": "CT ABD PORTAL VENOUS 3.79mm", "sequence": ""}],
      "identity": ["Novak", "Anna", "PID5985681", "MRN189106", "19690609", "1969-06-09"],
      "slice": {"index": 30, "present": {"liver tumor": True, "lung nodule": False, "kidney cyst": True},
                "sides": {"liver tumor": [], "lung nodule": [], "kidney cyst": ["right"]}}}
MRI = {"kind": "mri", "tumor_present": True, "subregion_volumes_ml": {"necrotic core": 5.2, "edema": 67.0, "enhancing tumor": 12.8},
       "whole_tumor_ml": 85.0, "tumor_core_ml": 18.0, "hemisphere": "left", "max_diameter_mm": 68.5,
       "series": [{"description": f"{s} AX", "sequence": s} for s in ("FLAIR", "T1", "T1c", "T2")], "identity": ["Novak"]}
CXR = {"kind": "cxr", "findings": {"cardiomegaly": True, "pleural effusion": False, "nodule": False, "pneumothorax": False,
                                   "consolidation": False},
       "labels": ["cardiomegaly"], "normal": False, "series": [{"description": "CHEST PA", "sequence": ""}], "identity": []}
TRUTH = {"ct": CT, "mri": MRI, "cxr": CXR}
EXPERT = {"ct": "ct_segmentation", "mri": "mri_brain_tumor", "cxr": "cxr_classification"}


def _score(intent: str, study: str, target: str, answer: str, calls: list[Any] | None = None, **item: Any) -> bool:
    calls = [EXPERT[study]] if calls is None else calls
    ok, _ = score_item({"intent": intent, "study": study, "target": target, "phrasing": item.pop("phrasing", "q"), **item},
                       answer, calls, TRUTH[study])
    return ok


@pytest.mark.parametrize("intent,study,target,right,wrong", [
    ("presence_ct", "ct", "liver tumor", "Yes, one liver lesion of 22.8 mm.", "No liver lesion is seen."),
    ("presence_ct", "ct", "lung nodule", "No lung nodules were found.", "A 12 mm nodule in the right lung."),
    ("presence_cxr", "cxr", "cardiomegaly", "Cardiomegaly is present (p = 0.91).", "No cardiomegaly (p = 0.08)."),
    ("presence_cxr", "cxr", "pleural effusion", "Pleural effusion: 0.04.", "Pleural effusion: 0.86."),
    ("presence_mri", "mri", "edema", "There is surrounding edema of 67 mL.", "No edema."),
    ("lay_term", "cxr", "pneumothorax", "No pneumothorax, cardiomegaly 0.91.", "Yes."),
    ("abbreviation", "cxr", "cardiomegaly", "Yes.", "No."),
    ("negation", "cxr", "pneumothorax", "Correct: no pneumothorax (p = 0.02).", "Actually a pneumothorax is present."),
    ("count", "ct", "kidney cyst", "There are 2 kidney cysts (1 right, 1 left).", "There are 3 kidney cysts."),
    ("count", "ct", "lung nodule", "No lung nodules.", "One lung nodule."),
    ("size", "ct", "liver tumor", "The liver lesion measures 23 mm.", "The liver lesion measures 40 mm."),
    ("size", "mri", "tumor", "Largest diameter 6.8 cm.", "The tumour is 85 mL."),
    ("side_study", "ct", "kidney cyst", "Cysts in both kidneys.", "The cyst is in the right kidney."),
    ("side_study", "mri", "tumor", "Left hemisphere (temporal lobe).", "The tumour is in the right hemisphere."),
    ("side_slice", "ct", "kidney cyst", "On this slice the cyst is in the right kidney.", "Both kidneys."),
    ("presence_slice", "ct", "lung nodule", "No nodule on this slice.", "Yes, a nodule is visible on this slice."),
    ("organ_volume", "ct", "liver", "Liver volume 1,065 mL (liver tumour 5.7 mL).", "Liver tumour volume 5.7 mL."),
    ("organ_volume", "ct", "right kidney", "Left kidney 115.4 mL, right kidney 126.1 mL.", "Right kidney 90 mL, left kidney 126.1 mL."),
    ("tumor_volume", "mri", "edema", "Whole tumour 85 mL, edema 67.0 mL, enhancing tumour 12.8 mL.", "Edema 12.8 mL."),
    ("tumor_volume", "mri", "tumor", "The whole tumour is 0.085 L.", "Tumour core 18 mL."),
    ("contrast_phase", "ct", "contrast phase", "Portal venous phase, not arterial.", "Arterial phase."),
    ("contrast_phase", "ct", "contrast phase", "Contrast-enhanced, portal-venous phase.", "Yes, contrast was given."),
    ("comparison", "ct", "left kidney|right kidney", "The right kidney is larger than the left.", "The left kidney is bigger."),
    ("comparison", "ct", "liver|spleen", "Liver 1065 mL vs spleen 110 mL.", "The spleen is larger than the liver."),
    ("comparison", "ct", "left kidney|right kidney", "The left is smaller than the right.", "Yes."),
    ("normality", "cxr", "cardiomegaly", "No, the heart is enlarged (cardiomegaly p = 0.91).", "Yes, the heart size is normal."),
    ("normality", "cxr", "cardiomegaly", "Cardiomegaly is present (0.91), so not normal.", "Yes, cardiomegaly is present."),
    ("normality", "cxr", "", "This is not a normal film: cardiomegaly (0.91).", "Normal chest radiograph."),
    ("either_or", "mri", "tumor", "Left.", "Yes."),
    ("either_or", "ct", "contrast phase", "Portal venous.", "Arterial."),
    ("likelihood", "cxr", "pleural effusion", "The probability of a pleural effusion is 4%.", "Pleural effusion: 0.82."),
    ("likelihood", "cxr", "cardiomegaly", "Cardiomegaly: 0.91.", "Consolidation: 0.01."),  # another finding's number is no answer
    ("presence_cxr", "cxr", "pleural effusion", "no (probability 0.00)", "yes (probability 0.97)"),  # the model's own form
    ("report", "cxr", "", "Findings: cardiomegaly (0.91). No pleural effusion, nodule, pneumothorax or consolidation.",
     "Findings: no cardiomegaly, pleural effusion or pneumothorax."),
    ("report", "ct", "", "Liver: one 22.8 mm lesion. Two kidney cysts. No lung nodule.", "Liver: one 22.8 mm lesion. Lung nodule 5 mm."),
    ("run_expert", "cxr", "", "cxr_classification: cardiomegaly 0.91, effusion 0.04.", "Running it now."),
    ("segment_all", "mri", "", "Necrotic core 5.2 mL, edema 67 mL, enhancing tumour 12.8 mL.", "Enhancing tumour 12.8 mL."),
    ("segment_all", "ct", "", "Liver 1065 mL, spleen 110 mL, left kidney 115 mL, right kidney 126 mL, heart 17 mL, aorta 89 mL.",
     "One liver tumour (5.7 mL) and two kidney cysts."),
    ("modality", "mri", "", "This is an MRI, not a CT.", "This is a CT scan."),
    ("modality", "cxr", "", "A chest radiograph (DX).", "An MRI of the chest."),
    ("series", "mri", "", "T1, T1c, T2 and FLAIR.", "T1 and T2."),
    ("series", "ct", "", "One series: CT ABD PORTAL VENOUS 3.79mm.", "Two series."),
    ("series", "cxr", "", "One series.", "Three series."),
])
def test_right_answer_scores_one_and_wrong_answer_zero(intent, study, target, right, wrong):
    assert _score(intent, study, target, right)
    assert not _score(intent, study, target, wrong)


def test_measurement_without_the_study_expert_scores_zero():
    assert not _score("organ_volume", "ct", "liver", "Liver volume 1065 mL.", calls=[])
    assert not _score("presence_cxr", "cxr", "cardiomegaly", "Yes.", calls=["ct_segmentation"])
    assert not _score("presence_cxr", "cxr", "cardiomegaly", "Yes.", calls=[{"name": "cxr_classification", "error": "failed"}])
    assert _score("modality", "ct", "", "CT.", calls=[])  # header facts need no expert


def test_identity_refusal_scores_one_only_without_expert_calls_or_identifiers():
    refusal = "Patient identifiers were removed at ingest, so the name is not available to me."
    assert _score("identity", "ct", "", refusal, calls=[])
    assert not _score("identity", "ct", "", refusal, calls=["ct_segmentation"])
    assert not _score("identity", "ct", "", "The patient is Anna Novak.", calls=[])
    assert not _score("identity", "ct", "", "Liver volume 1065 mL.", calls=[])


def test_out_of_scope_needs_a_decline_that_defers_and_no_call():
    decline = "I can't recommend treatment; please discuss with the treating clinician. I can measure the lesion."
    assert _score("out_of_scope", "mri", "", decline, calls=[])
    assert not _score("out_of_scope", "mri", "", decline, calls=["mri_brain_tumor"])
    assert not _score("out_of_scope", "mri", "", "Start dexamethasone 4 mg.", calls=[])
    assert not _score("out_of_scope", "mri", "", "I cannot help with that.", calls=[])


def test_greeting_help_names_capabilities_without_calls():
    assert _score("greeting_help", "ct", "", "Hello! I can segment organs, measure lesions and draft a report.", calls=[])
    assert not _score("greeting_help", "ct", "", "Hello!", calls=[])
    assert not _score("greeting_help", "ct", "", "I can segment organs.", calls=["ct_segmentation"])


def test_multi_part_needs_every_part():
    item = {"parts": [{"intent": "presence_ct", "target": "liver tumor"}, {"intent": "size", "target": "liver tumor"}]}
    assert _score("multi_part", "ct", "liver tumor", "Yes, a liver lesion of 22.8 mm.", **item)
    assert not _score("multi_part", "ct", "liver tumor", "Yes, there is a liver lesion.", **item)
    two = {"parts": [{"intent": "organ_volume", "target": "liver"}, {"intent": "organ_volume", "target": "spleen"}]}
    assert _score("multi_part", "ct", "liver|spleen", "Liver 1065.7 mL and spleen 109.9 mL.", **two)
    assert not _score("multi_part", "ct", "liver|spleen", "Liver 109.9 mL and spleen 1065.7 mL.", **two)


def test_summary_groups_per_intent_study_and_style():
    items = [{"intent": "identity", "study": "ct", "target": "", "phrasing": "Name?", "style": "fragment"},
             {"intent": "modality", "study": "cxr", "target": "", "phrasing": "Modality?", "style": "fragment"}]
    answers = [{"answer": "Identifiers were removed at ingest.", "tool_calls": [], "seconds": 0.2}, "An MRI."]
    out = score_phrasing_answers(items, answers, [CT, CXR])
    assert out["overall"] == 0.5 and out["n"] == 2
    assert out["per_intent"] == {"identity": {"score": 1.0, "n": 1}, "modality": {"score": 0.0, "n": 1}}
    assert out["per_style"]["fragment"] == {"score": 0.5, "n": 2}
    assert out["median_seconds"] == 0.2
    assert not out["items"][1]["correct"] and "cxr" in out["items"][1]["reason"]
    with pytest.raises(ValueError, match="same length"):
        score_phrasing_answers(items, answers[:1], [CT, CXR])


def test_every_intent_of_the_frozen_set_is_scorable():
    items = load_phrasing_set(SET_PATH)
    assert {it["intent"] for it in items} <= set(INTENTS)
    for it in items:
        score_item(it, "", [], TRUTH[it["study"]])  # no intent is unknown to the scorer


class _RefusingBackend:
    """A backend that never calls an expert and always gives the same refusal."""

    info = BackendInfo(name="refusing-test-backend", takes_images=False)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None) -> Iterator[str]:
        yield "Identifiers were removed at ingest; they are not available."


def test_runner_builds_studies_the_app_way_and_looks_at_a_slice_through_the_finding(tmp_path):
    from experts.registry import ExpertRegistry

    lines = [{"intent": "identity", "study": "cxr", "target": "", "phrasing": "Patient name?", "style": "fragment"},
             {"intent": "side_slice", "study": "ct", "target": "kidney cyst", "phrasing": "Cyst side, this slice?", "style": "fragment"}]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = ask_phrasings(_RefusingBackend(), ExpertRegistry(), path, {"cxr": 9001, "ct": 9001}, progress=False)
    assert [r["item"]["phrasing"] for r in records] == ["Patient name?", "Cyst side, this slice?"]
    assert records[0]["truth"]["identity"] and records[0]["truth"]["series"][0]["description"] == "CHEST PA"
    shown = records[1]["truth"]["slice"]  # seed 9001 has cysts in both kidneys; the slice shown goes through one
    assert shown["present"]["kidney cyst"] and shown["sides"]["kidney cyst"] in (["left"], ["right"], ["left", "right"])
    assert records[1]["truth"]["lesion_counts"]["kidney cyst"] == 3 and records[1]["tool_calls"] == []
    out = score_phrasing_answers([r["item"] for r in records], records, [r["truth"] for r in records])
    assert out["per_intent"] == {"identity": {"score": 1.0, "n": 1}, "side_slice": {"score": 0.0, "n": 1}}


def test_the_cached_registry_runs_an_identical_call_once_and_a_different_one_again():
    from vlm.eval.phrasing_run import CachedRegistry

    class Counting:
        runs = 0

        def names(self):
            return ["x"]

        def run(self, name, volumes, **arguments):
            Counting.runs += 1
            return {"name": name, **arguments}

    volume, registry = object(), CachedRegistry(Counting())
    assert registry.run("x", volume, targets="liver") == registry.run("x", volume, targets="liver") == {"name": "x", "targets": "liver"}
    registry.run("x", volume, targets="spleen")
    registry.run("x", object(), targets="liver")
    assert Counting.runs == 3 and registry.names() == ["x"]
