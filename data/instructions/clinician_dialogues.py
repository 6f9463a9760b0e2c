"""Expert conversations on questions asked the way clinicians ask them, for the ``medical-ift`` stage:
``clinician_dialogue``.

The question comes from ``data.instructions.clinician_questions``. Its answer is grounded like every expert
conversation: the call naming the structure (``ct_segmentation``'s ``targets``), the tool message of the expert's
result on the phantom's ground truth (``tool_result_from_truth``), and a short answer naming the result fields that
answer the question's form — ``[[cardiomegaly normal?]]`` when asked whether the heart size is normal,
``[[larger kidney]]`` for a comparison, ``[[kidney cyst side]]`` for a side, ``[[pneumothorax]]`` (present / not
present) for "no pneumothorax, right?". When the question is about the slice on screen (the agent's own reading,
``asks_about_shown_slice``) the tool message carries the slice's findings, as at inference, and the answer names them.
"""

from __future__ import annotations

import numpy as np

from data.instructions.clinician_questions import (CT_LESION_KEYS, CT_ORGAN_KEYS, PAIRED_ORGANS, ClinicianMix, ClinicianQuestionError, Part,
                                                  draw_question)
from data.instructions.expert_dialogues import (Dialogue, ct_report_answer, ct_summary_answer, cxr_report_answer, grounded_dialogue,
                                                mri_summary_answer, tool_result_from_truth)
from data.instructions.views import CaseView
from data.phantoms.labels import CXR_FINDINGS
from data.slice_facts import asks_about_shown_slice
from data.tool_text import format_tool_call, format_tool_result, resolve_references, value_reference

__all__ = ["clinician_dialogue"]

_EXPERT = {"ct": "ct_segmentation", "mri": "mri_brain_tumor", "cxr": "cxr_classification"}
_PHASE_INTENTS = ("phase", "contrast", "either_phase")
# the brain-tumour expert's field names for the lexicon's keys: its finding, its measured structure
_MRI_FINDING = {"tumor": "tumor", "enhancing tumor": "enhancing tumor", "necrotic core": "necrosis", "edema": "edema"}
_MRI_VOLUME = {"tumor": "whole tumor", "tumor core": "tumor core", "enhancing tumor": "enhancing tumor", "necrotic core": "necrotic core",
               "edema": "edema"}
_CT_LESIONS, _CT_ORGANS, _PAIRS = CT_LESION_KEYS, CT_ORGAN_KEYS, PAIRED_ORGANS


def clinician_dialogue(view: CaseView, rng: np.random.Generator, mix: ClinicianMix = ClinicianMix(), intent: str | None = None) -> Dialogue:
    """One clinician-style question about ``view``'s study, the expert call naming what it asks, the tool message of
    the expert's result on the case's ground truth, and the answer naming the result fields; ``info`` holds the
    question's intent family, frame groups and style."""
    present, in_slice = _present(view)
    for _ in range(20):
        ask = draw_question(view.kind, rng, present=present, in_slice=in_slice, mix=mix, intent=intent)
        on_slice = view.kind != "cxr" and asks_about_shown_slice(ask.text)
        if not (on_slice and any(_slice_name(view.kind, p.key) in view.ambiguous for p in ask.parts)):  # never about a sliver
            break
    arguments = _arguments(view.kind, ask.parts, mix.target_lists)
    result = tool_result_from_truth(view.kind, view.truth, arguments, rng, view.facts if on_slice else None)
    tool = format_tool_result(result)
    answer = " ".join(dict.fromkeys(_answer(view, p, on_slice, tool) for p in ask.parts))  # two parts may share an answer
    turns = [{"from": "human", "value": ask.text}, {"from": "gpt", "value": format_tool_call(_EXPERT[view.kind], arguments)},
             {"from": "tool", "value": tool}, {"from": "gpt", "value": answer}]
    info = {"family": ask.family, "intents": [p.intent for p in ask.parts], "style": ask.style}
    return grounded_dialogue(turns, [{"name": _EXPERT[view.kind], "arguments": arguments}], [result], "clinician", info)


def _present(view: CaseView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The lexicon keys present in the study, and on the slice shown."""
    t, f = view.truth, view.facts
    if view.kind == "ct":
        return (tuple(k for k in _CT_LESIONS if t["lesion_counts"][k] > 0), tuple(k for k in _CT_LESIONS if f["lesion_counts"][k] > 0))
    if view.kind == "mri":
        sub = t["subregion_volumes_ml"]
        on = {"tumor": t["tumor_present"], "enhancing tumor": sub["enhancing tumor"] > 0, "necrotic core": sub["necrotic core"] > 0,
              "edema": sub["edema"] > 0}
        return tuple(k for k, v in on.items() if v), (("tumor",) if f["tumor_visible"] else ())
    return tuple(k for k in CXR_FINDINGS if t["findings"][k]), ()


def _slice_name(kind: str, key: str) -> str:
    return "tumor" if kind == "mri" else key


def _arguments(kind: str, parts: tuple[Part, ...], lists: bool = False) -> dict:
    """The call's arguments: ``ct_segmentation``'s targets naming what the parts ask — one name, or several as a list
    (``lists``) or as the group covering them ("organs", "lesions", "everything"); none for the other experts."""
    if kind != "ct":
        return {}
    targets: list[str] = []
    # the phase comes with every call: the aorta is named for it only when nothing else is
    for p in [p for p in parts if p.intent not in _PHASE_INTENTS] or parts:
        for t in _targets(p):
            if t not in targets:
                targets.append(t)
    if len(targets) == 1:
        return {"targets": targets[0]}
    if lists:
        return {"targets": targets}
    if all(t in _CT_LESIONS for t in targets):
        return {"targets": "lesions"}
    return {"targets": "organs" if all(t in _CT_ORGANS for t in targets) else "everything"}


def _targets(part: Part) -> list[str]:
    whole = {"normal_study": "lesions", "abnormal_study": "lesions", "report": "lesions", "run_expert": "everything",
             "segment_everything": "everything", "segment_organs": "organs", "segment_lesions": "lesions"}
    if part.intent in whole:
        return [whole[part.intent]]
    if part.intent in _PHASE_INTENTS:
        return ["aorta"]  # the expert reads the phase from the aorta (and the liver) whatever is asked
    if part.key in _PAIRS:
        return [f"left {_PAIRS[part.key]}", f"right {_PAIRS[part.key]}"]
    return [part.key]


def _answer(view: CaseView, part: Part, on_slice: bool, tool: str) -> str:
    """The first candidate answer whose references the tool message fills."""
    candidates = _candidates(view, part, on_slice)
    for text in candidates:
        if not resolve_references(text, [tool])[1]:
            return text
    raise AssertionError(f"no answer to a {part.intent} question on {part.key or 'the study'} resolves against {tool}")


def _candidates(view: CaseView, part: Part, on_slice: bool) -> list[str]:
    kind, k, intent = view.kind, part.key, part.intent
    R = value_reference
    if intent in ("report", "run_expert") or intent.startswith("segment_"):
        return [_whole_answer(view, intent)]
    unread = "The contrast phase is not in the expert result: it is read from the aorta and the liver, and the scan does not show both."
    if intent in ("phase", "either_phase"):
        return [f"Contrast phase: {R('phase')}.", unread]
    if intent == "contrast":
        return [f"Contrast: {R('contrast?')} ({R('phase')}).", unread]
    if intent == "normal_study":
        return [f"Normal: {R('normal?')}."]
    if intent == "abnormal_study":
        if kind == "ct":
            return [" ".join(f"{_cap(x)}s: {R(x)}." for x in _CT_LESIONS)]
        if kind == "mri":
            return [" ".join(f"{_cap(x)}: {R(x)}." for x in _MRI_FINDING.values())]
        return [f"Positive findings: {R('positive findings')}."]
    if intent in ("comparison", "either_larger"):
        p = _PAIRS[k]
        both = f"Left {p} {R(f'left {p} volume')}, right {p} {R(f'right {p} volume')}."
        vols = view.truth["organ_volumes_ml"]
        if min(vols[f"left {p}"], vols[f"right {p}"]) <= 0:  # one side not in the scan: no comparison to make
            return [both]
        word = "smaller" if part.smaller else "larger"
        return [f"{_cap(word)} {p}: {R(f'{word} {p}')}.", both]
    if intent == "volume":
        if k in _PAIRS:
            p = _PAIRS[k]
            return [f"Left {p} {R(f'left {p} volume')}, right {p} {R(f'right {p} volume')}."]
        return [f"The {k} volume is {R(k + ' volume')}."]
    if intent == "either_findings":
        return [f"{_cap(k)}: {R(k)}. {_cap(part.second)}: {R(part.second)}."]
    name = _MRI_FINDING.get(k, k) if kind == "mri" else k
    plural_name = f"{name}s" if kind == "ct" else name  # "Kidney cysts: none found."
    statement = f"{_cap(plural_name)}: {R(name)}."
    if intent in ("presence", "abnormal"):
        return [f"{_cap(name)}: {R(name + '?')}."]
    if intent in ("likelihood", "negation"):
        return [statement]
    if intent == "normal":
        return [f"Normal: {R(name + ' normal?')}."]
    if intent == "count":
        return [f"Number of {name}s: {R(name + ' count')}."]
    if intent == "tumor_volume":
        if kind == "mri":
            return [f"{_cap(_MRI_VOLUME[k])} volume: {R(_MRI_VOLUME[k] + ' volume')}."]
        return [f"{_cap(name)} volume: {R(name + ' volume')}.", statement]
    slice_ = _slice_name(kind, k) + " in this slice"
    in_slice = [f"{_cap(slice_)}: {R(slice_ + '?')}."]
    if intent == "presence_slice":
        return in_slice
    whole = "whole tumor" if kind == "mri" else name
    if intent in ("size", "either_size"):
        return [f"{'Tumor size' if kind == 'mri' else 'Largest ' + name}: {R(whole + ' size')}.", statement]
    if intent == "size_slice":
        return [f"{_cap(slice_)}: {R(slice_ + ' size')}."] + in_slice
    side = [f"{_cap(name)} side: {R(name + ' side')}.", statement]
    if intent == "side_slice" or intent == "either_side" and on_slice:
        return side if kind == "mri" else [f"{_cap(slice_)}: {R(slice_ + ' side')}."] + in_slice
    if intent in ("side", "either_side"):
        return side
    raise ClinicianQuestionError(f"no answer for a {intent!r} question: add it to clinician_dialogues._candidates.")


def _whole_answer(view: CaseView, intent: str) -> str:
    if intent == "report":
        if view.kind == "ct":
            return ct_report_answer(view)
        if view.kind == "cxr":
            return cxr_report_answer(view)
        R = value_reference
        return (f"Findings: Brain MRI (T1, T1c, T2, FLAIR), read with the brain tumor expert. Present: {R('positive findings')}. "
                f"Absent: {R('negative findings')}. Impression: {R('impression')}")
    if view.kind == "mri":
        return mri_summary_answer()
    if view.kind == "cxr":
        return "Findings: " + "; ".join(f"{f} {value_reference(f)}" for f in CXR_FINDINGS) + "."
    mode = {"segment_organs": "organs", "segment_lesions": "lesions"}.get(intent, "everything")
    return ct_summary_answer(tool_result_from_truth("ct", view.truth, {"targets": mode}, np.random.default_rng(0)), mode)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
