"""Visual questions about a phantom view, for the ``ift`` stage: closed (yes/no, choice) and open.

Categories: presence, location, laterality, count, size, modality, region, comparison, plus phase (CT),
sequence (MRI) and heart size (radiograph). Each question is phrased from several templates through
``paraphrase.phrase``; answers are short canonical strings (exact-match scorable). Yes and no answers
are balanced per case by asking about present and absent findings alike.

A CT or MRI picture is one slice of a study, so two kinds of question coexist: "on this slice" questions
are about the picture (facts of the slice; the expert's mask on the slice on screen answers those asking
whether a structure is shown: ``[[kidney cyst in this slice?]]``), patient-level ones ("Does the patient have a liver
tumor?", "Is there necrosis?") by the expert that reads the whole study (facts of the study).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.instructions.paraphrase import phrase
from data.instructions.views import CaseView
from data.phantoms.labels import CXR_FINDINGS
from data.slice_facts import slice_finding_name

__all__ = ["QA", "vqa_items", "CATEGORIES"]

CATEGORIES = ("presence", "location", "laterality", "count", "size", "modality", "region", "comparison", "phase", "sequence", "heart size")


@dataclass
class QA:
    """One question with its canonical answer. answer_type: "closed" (yes/no or a choice) or "open".

    expert / key / arguments: a question an expert answers better than the picture does (a radiograph
    finding, the brain tumour and its side, a lesion type anywhere in a CT study, the CT contrast phase)
    is answered by calling ``expert`` with ``arguments`` and naming its result field ``key``
    (``[[pneumothorax?]]`` → "yes (probability 0.87)", ``[[hemisphere]]`` → "left hemisphere",
    ``[[phase]]`` → "arterial phase"); so is whether the slice on screen shows a structure
    (``[[spleen in this slice?]]``, from the expert's mask there), and the size or side of a lesion it shows
    (``[[liver tumor in this slice size]]`` → "large (largest diameter 34.2 mm)")."""

    question: str
    answer: str
    answer_type: str
    category: str
    expert: str | None = None
    key: str | None = None
    arguments: dict | None = None


def vqa_items(view: CaseView, rng: np.random.Generator, n: int = 4) -> list[QA]:
    """Up to ``n`` questions about ``view``, at most one per category, categories in random order."""
    makers = {"ct": _ct, "mri": _mri, "cxr": _cxr}[view.kind]
    candidates = makers(view, rng)
    by_cat: dict[str, list[QA]] = {}
    for qa in candidates:
        by_cat.setdefault(qa.category, []).append(qa)
    cats = list(by_cat)
    rng.shuffle(cats)
    return [by_cat[c][int(rng.integers(len(by_cat[c])))] for c in cats[:n]]


def _brain_expert(key: str) -> tuple[str, str]:
    return "mri_brain_tumor", key


def _chest_expert(key: str) -> tuple[str, str]:
    return "cxr_classification", key


def _phase_expert(key: str) -> tuple[str, str, dict]:  # the phase is read from the aorta's enhancement
    return "ct_segmentation", key, {"targets": "aorta"}


def _lesion_expert(lesion: str) -> tuple[str, str, dict]:
    return "ct_segmentation", lesion + "?", {"targets": lesion}


def _slice_expert(kind: str, structure: str, asked: str = "?") -> tuple[str, str, dict]:
    """A question about the slice on screen is answered from the expert's mask on that slice: whether it
    shows ``structure`` (``asked`` "?"), or the ``"size"`` or ``"side"`` of what it shows."""
    key = slice_finding_name("tumor" if kind == "mri" else structure) + ("?" if asked == "?" else " " + asked)
    if kind == "mri":
        return "mri_brain_tumor", key, {}
    return "ct_segmentation", key, {"targets": structure}


def _pick(templates: tuple[str, ...], rng) -> str:
    return templates[int(rng.integers(len(templates)))]


def _balanced(names: list[str], present: list[str], rng) -> str:
    """A present name or an absent one, each half of the time when both exist (yes and no balanced)."""
    absent = [n for n in names if n not in present]
    pool = present if present and (rng.random() < 0.5 or not absent) else absent
    return pool[int(rng.integers(len(pool)))]


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


_PRESENCE = ("{Is there|Do you see|Can you see|Does this image show} {a|any} <x> {in this image|here|}?",
             "Is there {any |}evidence of {a|} <x> {in this image|}?",
             "{Does the patient have|Is there} {a|any} <x>?", "<x>: {present or absent|yes or no}?")
# A CT or MRI picture is one slice of a study: "on this slice" asks the picture, the patient-level
# phrasings ask the whole study, which the expert reads.
_SLICE_PRESENCE = ("{Is there|Do you see|Can you see} {a|any} <x> {in this slice|on this slice}?",
                   "Is {a|any} <x> {visible|shown} {in this slice|on this slice}?")
_STUDY_PRESENCE = ("{Does the patient have|Is there} {a|any} <x>{ in this study| in this scan| anywhere in the scan|}?",
                   "Is there {any |}evidence of {a|} <x>{ in this study| in the scan|}?",
                   "<x>: {present or absent|yes or no}?")
_MODALITY_Q = ("What {imaging |}modality {is this|was used|is shown}?", "{Which|What} kind of {scan|image} is this?",
               "How was this image {acquired|taken}?")


def _modality(view: CaseView, rng) -> list[QA]:
    name = view.facts["modality"]
    other = {"CT": "MRI", "MRI": "CT", "X-ray": "CT"}[name]
    a, b = (name, other) if rng.random() < 0.5 else (other, name)
    return [QA(phrase(_MODALITY_Q[int(rng.integers(len(_MODALITY_Q)))], rng), name, "open", "modality"),
            QA(phrase(f"Is this {{image|scan}} {{a|an}} {a} or {{a|an}} {b}?", rng, polite=False), name, "closed", "modality")]


def _region(view: CaseView, rng) -> list[QA]:
    region = view.facts["region"]
    q = phrase("{Which|What} {part of the body|body region|anatomical region} {is shown|is imaged|does this image show}?", rng)
    return [QA(q, region, "open", "region")]


def _ct(view: CaseView, rng) -> list[QA]:
    f = view.facts
    out = _modality(view, rng) + _region(view, rng)
    kinds = ["liver tumor", "lung nodule", "kidney cyst"]
    present = [k for k in kinds if f["lesion_counts"][k] > 0]
    absent = [k for k in kinds if f["lesion_counts"][k] == 0 and k not in view.ambiguous]
    if present or absent:
        k = _balanced(present + absent, present, rng)
        out.append(QA(phrase(_pick(_SLICE_PRESENCE, rng), rng, x=k), _yn(k in present), "closed", "presence", *_slice_expert("ct", k)))
    in_study = [k for k in kinds if view.truth["lesion_counts"][k] > 0]
    k = _balanced(kinds, in_study, rng)
    out.append(QA(phrase(_pick(_STUDY_PRESENCE, rng), rng, x=k), _yn(k in in_study), "closed", "presence", *_lesion_expert(k)))
    clear = [o for o, px in f["organ_area_px"].items() if o in f["organs"] or px == 0]  # cut clearly, or not at all
    if clear:
        organ = _balanced(clear, f["organs"], rng)
        # "in this slice", never "in this image": paraphrases turn that into "in this study", a question about the study
        out.append(QA(phrase("{Is|Can you see} the <o> {visible|shown|included} {in this slice|on this slice|here}?", rng, o=organ),
                      _yn(organ in f["organs"]), "closed", "presence", *_slice_expert("ct", organ)))
    for k in present:
        items = [les for les in f["lesions"] if les["type"] == k]
        organs = sorted({les["organ"] for les in items})
        if len(organs) == 1:
            out.append(QA(phrase("{Where|In which organ} is the <x> {located|seen|}?", rng, x=k), organs[0], "open", "location"))
            if items[0]["side"] and k != "liver tumor":
                out.append(QA(phrase("Is the <x> on the left or {the |}right{ side|}?", rng, x=k), items[0]["side"], "closed", "laterality",
                              *_slice_expert("ct", k, "side")))
        if k not in view.ambiguous:
            out.append(QA(phrase("How many <x>s {are there|can you see|are visible} {here|in this slice|on this slice}?", rng, x=k),
                          str(len(items)), "open", "count"))
        if len(items) == 1:
            out.append(QA(phrase("Is the <x> small, medium or large?", rng, x=k), items[0]["size"], "closed", "size", *_slice_expert("ct", k, "size")))
    if not f["lesions"] and not view.ambiguous:
        out.append(QA(phrase("How many {focal |}lesions {are there|can you see} {here|in this slice|on this slice}?", rng), "0", "open", "count"))
    lesions = f["lesions"]
    if len(lesions) >= 2:
        a, b = (lesions[i] for i in rng.choice(len(lesions), 2, replace=False))
        if (a["type"], a["organ"]) != (b["type"], b["organ"]) and abs(a["diameter_mm"] - b["diameter_mm"]) > 4.0:
            bigger = a if a["diameter_mm"] > b["diameter_mm"] else b
            name = lambda les: f"the {les['type']} in the {les['organ']}"  # noqa: E731
            out.append(QA(phrase(f"Which is larger, {name(a)} or {name(b)}?", rng, polite=False), name(bigger)[4:], "closed", "comparison"))
    big = [o for o in ("liver", "spleen", "heart") if f["organ_area_px"][o] >= 20]
    if len(big) >= 2:
        a, b = (big[i] for i in rng.choice(len(big), 2, replace=False))
        if abs(f["organ_area_px"][a] - f["organ_area_px"][b]) > 0.3 * max(f["organ_area_px"][a], f["organ_area_px"][b]):
            larger = a if f["organ_area_px"][a] > f["organ_area_px"][b] else b
            out.append(QA(phrase(f"Which {{appears|looks}} larger in this slice, the {a} or the {b}?", rng, polite=False), larger, "closed", "comparison"))
    out.append(QA(phrase("{Was {intravenous |}contrast given|Was this scan acquired with {intravenous |}contrast|Is this a contrast-enhanced scan}?", rng),
                  _yn(f["phase"] != "non-contrast"), "closed", "phase", *_phase_expert("contrast?")))
    out.append(QA(phrase("{Which|What} contrast phase is this: non-contrast, arterial or portal venous?", rng), f["phase"], "closed", "phase", *_phase_expert("phase")))
    return out


def _mri(view: CaseView, rng) -> list[QA]:
    f = view.facts
    out = _modality(view, rng) + _region(view, rng)
    t = view.truth  # the expert's questions are about the whole study, the picture's about this slice
    sub = t["subregion_volumes_ml"]
    out.append(QA(phrase(_pick(_STUDY_PRESENCE, rng), rng, x="tumor"), _yn(t["tumor_present"]), "closed", "presence", *_brain_expert("tumor?")))
    if "tumor" not in view.ambiguous:
        out.append(QA(phrase(_pick(_SLICE_PRESENCE, rng), rng, x="tumor"), _yn(f["tumor_visible"]), "closed", "presence", *_slice_expert("mri", "tumor")))
    if t["tumor_present"]:
        out.append(QA(phrase("{Which hemisphere|Which side of the brain} {is the <x> in|contains the <x>}?", rng, x="tumor"), t["hemisphere"], "closed", "laterality", *_brain_expert("hemisphere")))
        out.append(QA(phrase("Is the <x> in the left or {the |}right hemisphere?", rng, x="tumor"), t["hemisphere"], "closed", "laterality", *_brain_expert("hemisphere")))
        out.append(QA(phrase("{Does the <x> enhance|Is there enhancement} {after contrast|on T1c|on the post-contrast image}?", rng, x="tumor"), _yn(sub["enhancing tumor"] > 0), "closed", "presence", *_brain_expert("enhancing tumor?")))
        out.append(QA(phrase("{Is there|Do you see} {a necrotic core|central necrosis|necrosis} {in the <x>|}?", rng, x="tumor"), _yn(sub["necrotic core"] > 0), "closed", "presence", *_brain_expert("necrosis?")))
        out.append(QA(phrase("{Is there|Do you see} {surrounding|peritumoral|} <x>?", rng, x="edema"), _yn(sub["edema"] > 0), "closed", "presence", *_brain_expert("edema?")))
    if f["tumor_visible"]:
        out.append(QA(phrase("{In which lobe|Which lobe} is the <x> {located|}?", rng, x="tumor"), f["lobe"], "open", "location"))
        out.append(QA(phrase("Is the <x> small, medium or large?", rng, x="tumor"), f["size"], "closed", "size", *_slice_expert("mri", "tumor", "size")))
        px = f["subregion_px"]
        if px["edema"] and (px["enhancing tumor"] + px["necrotic core"]) and abs(px["edema"] - px["enhancing tumor"] - px["necrotic core"]) > 20:
            core_bigger = px["enhancing tumor"] + px["necrotic core"] > px["edema"]
            out.append(QA(phrase("{Which is larger|What covers more area} {in this slice|}: the tumor core or the <x>?", rng, x="edema"),
                          "tumor core" if core_bigger else "edema", "closed", "comparison"))
    out.append(QA(phrase("{Which|What} sequence {shows|displays} {the edema|fluid-sensitive signal with dark CSF} {best|most clearly}?", rng), "FLAIR", "open", "sequence"))
    out.append(QA(phrase("{How many|What number of} {sequences|MRI sequences} are shown?", rng), "4", "open", "sequence"))
    out.append(QA(phrase("{Which|What} sequence {is acquired after contrast|is the post-contrast one}?", rng), "T1c", "open", "sequence"))
    return out


def _cxr(view: CaseView, rng) -> list[QA]:
    f = view.facts
    on, lat = f["findings"], f["laterality"]
    out = _modality(view, rng) + _region(view, rng)
    present = [k for k in CXR_FINDINGS if on[k]]
    absent = [k for k in CXR_FINDINGS if not on[k]]
    for flag, pool in ((True, present), (False, absent)):
        if pool:
            k = pool[int(rng.integers(len(pool)))]
            out.append(QA(phrase(_pick(_PRESENCE, rng), rng, x=k), _yn(flag), "closed", "presence", *_chest_expert(k + "?")))
    sided = [k for k in present if lat[k]]
    if sided:
        k = sided[int(rng.integers(len(sided)))]
        out.append(QA(phrase("{Which side|On which side} is the <x>{ located|}: left, right or {bilateral|both}?", rng, x=k),
                      lat[k], "closed", "laterality"))
        out.append(QA(phrase("Where is the <x>?", rng, x=k), lat[k] if k in ("pleural effusion", "pneumothorax") else f"{lat[k]} {f['details'][k]['zone']} zone",
                      "open", "location"))
    out.append(QA(phrase("{How many|What number of} {abnormalities|abnormal findings} {are there|do you see}?", rng), str(len(present)), "open", "count"))
    out.append(QA(phrase("{Is the heart enlarged|Is there cardiomegaly|Is the cardiothoracic ratio above 0.5}?", rng), _yn(on["cardiomegaly"]), "closed", "heart size", *_chest_expert("cardiomegaly?")))
    out.append(QA(phrase("{Which|What} {abnormalities|findings} {are present|do you see}?", rng),
                  ", ".join(present) if present else "none", "open", "presence"))
    if on["nodule"]:
        out.append(QA(phrase("Is the <x> small, medium or large?", rng, x="nodule"),
                      "small" if f["details"]["nodule"]["diameter_mm"] < 10 else ("medium" if f["details"]["nodule"]["diameter_mm"] <= 30 else "large"),
                      "closed", "size"))
    if on["pleural effusion"] and on["pneumothorax"] and lat["pleural effusion"] != "bilateral":
        same = lat["pleural effusion"] == lat["pneumothorax"]
        out.append(QA(phrase("Are the {pleural effusion|effusion} and the pneumothorax on the same side?", rng), _yn(same), "closed", "comparison"))
    out.append(QA(phrase("{What|Which} {projection|view} is this radiograph?", rng), f["view"], "open", "modality"))
    return out
