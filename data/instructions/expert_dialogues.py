"""Expert conversations for the ``medical-ift`` stage: when to call which expert, with which arguments,
the tool result, an answer grounded in its numbers, follow-ups answered from the same result, report
requests on radiographs written with the classifier's findings, and questions that need no expert.

The tool turn is exactly ``data.tool_text.format_tool_result(result)`` (what ``experts.base.tool_message``
returns at inference) for a ``ToolResult`` built from the
phantom's ground truth in the same shape the expert itself returns (same findings, measurement names,
order and units), so training and inference share one template. Calls are written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (compact JSON, as the agent parses them).

Answers name the result fields they rest on (``The liver volume is [[liver volume]].``) instead of
copying the numbers; the agent fills them in from the tool result (``data.tool_text.resolve_references``),
so every number the user reads is the expert's own and a small model never has to copy digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from data.instructions.captions import caption_prompt
from data.instructions.paraphrase import phrase
from data.instructions.views import CaseView
from data.slice_facts import lesion_side_finding, measured_structures, slice_diameter, slice_finding_name
from data.tool_text import REF_OPEN, Finding, Measurement, ToolResult, format_tool_call, format_tool_result, resolve_references, value_reference
from data.phantoms.labels import CT_LABELS, CT_LESIONS, CT_ORGANS, CT_TARGETS, CXR_FINDINGS, MRI_LABELS, ct_target_values

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")

__all__ = ["Dialogue", "expert_dialogue", "tool_result_from_truth", "format_tool_call", "ct_target_values", "CT_TARGETS",
           "grounded_dialogue", "ct_summary_answer", "ct_report_answer", "cxr_report_answer", "mri_summary_answer", "lesion_sides"]



@dataclass
class Dialogue:
    """Turns ``[{"from": human|gpt|tool, "value": str}]`` plus what the evaluation checks.

    tool_calls: the expected calls ``{"name", "arguments"}`` in order; grounded_values: the number strings
    (with units) the answers must quote; task: "expert", "no-expert" or "clinician"; results: the ``ToolResult``
    behind each tool turn (not written to JSON); info: more for the record's ``meta`` (a clinician question's intent
    and style).
    """

    turns: list[dict]
    tool_calls: list[dict] = field(default_factory=list)
    grounded_values: list[str] = field(default_factory=list)
    task: str = "expert"
    results: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


def tool_result_from_truth(kind: str, truth: dict, arguments: dict, rng: np.random.Generator, shown: dict | None = None):
    """The ``ToolResult`` the expert would return if it were perfect on this case. ``shown``: the facts of
    the slice on screen (``CaseView.facts``) when the question asks about it; the result then ends with
    the "<structure> in this slice" findings the agent adds at inference (``data.slice_facts``)."""
    result = _truth_result(kind, truth, arguments, rng)
    if shown is not None and kind in ("ct", "mri"):
        if kind == "mri":
            result.findings.append(Finding(slice_finding_name("tumor"), bool(shown["tumor_visible"])))
            if shown["tumor_visible"]:
                result.measurements.append(slice_diameter("tumor", shown["diameter_mm"]))
        else:
            structures = measured_structures(result.measurements)
            result.findings += [Finding(slice_finding_name(s), shown["lesion_counts"][s] > 0 if lesion else s in shown["organs"])
                                for s, lesion in structures]
            for s in (s for s, lesion in structures if lesion and shown["lesion_counts"][s] > 0):
                seen = [les for les in shown["lesions"] if les["type"] == s]
                result.findings += [lesion_side_finding(s, side) for side in ("left", "right") if any(les["midline_side"] == side for les in seen)]
                result.measurements.append(slice_diameter(s, max(les["diameter_mm"] for les in seen)))
    return result


def _truth_result(kind: str, truth: dict, arguments: dict, rng: np.random.Generator):
    if kind == "ct":
        findings, measurements = [], []
        for value in ct_target_values(arguments.get("targets", "everything")):
            name = CT_LABELS[value]
            if value in CT_LESIONS:
                count = int(truth["lesion_counts"][name])
                findings.append(Finding(name, count > 0))
                measurements.append(Measurement(name, "count", float(count), "count"))
                if count:
                    diam = max(les["max_diameter_mm"] for les in truth["lesions"] if les["type"] == name)
                    measurements.append(Measurement(name, "volume", float(truth["lesion_volumes_ml"][name]), "mL"))
                    measurements.append(Measurement(name, "largest diameter", float(diam), "mm"))
                    findings += [Finding(f"{name} on the {side}", True) for side in lesion_sides(truth, name)]  # as the expert reports them
            else:
                measurements.append(Measurement(name, "volume", float(truth["organ_volumes_ml"][name]), "mL"))
        if truth["organ_volumes_ml"]["aorta"] > 0 and truth["organ_volumes_ml"]["liver"] > 0:  # the expert reads the phase from both
            findings += [Finding(f"{truth['phase']} phase", True), Finding("contrast", truth["phase"] != "non-contrast")]
            measurements += [Measurement(o, "mean attenuation", float(truth["mean_hu"][o]), "HU") for o in ("aorta", "liver")]
        return ToolResult(expert="ct_segmentation", arguments=dict(arguments), findings=findings, measurements=measurements)
    if kind == "mri":
        sub = truth["subregion_volumes_ml"]
        wt, tc = float(truth["whole_tumor_ml"]), float(truth["tumor_core_ml"])
        measurements = [Measurement(MRI_LABELS[v], "volume", float(sub[MRI_LABELS[v]]), "mL") for v in MRI_LABELS]
        measurements += [Measurement("whole tumor", "volume", wt, "mL"), Measurement("tumor core", "volume", tc, "mL")]
        findings = [Finding("tumor", wt > 0), Finding("enhancing tumor", sub["enhancing tumor"] > 0), Finding("necrosis", sub["necrotic core"] > 0),
                    Finding("edema", sub["edema"] > 0)]
        if wt > 0:
            measurements.append(Measurement("whole tumor", "largest diameter", float(truth["max_diameter_mm"]), "mm"))
            findings.append(Finding(f"{truth['hemisphere']} hemisphere", True))
        return ToolResult(expert="mri_brain_tumor", arguments={}, findings=findings, measurements=measurements)
    findings = []
    for f in CXR_FINDINGS:
        on = bool(truth["findings"][f])
        p = float(rng.uniform(0.62, 0.99) if on else rng.uniform(0.01, 0.38))
        findings.append(Finding(f, on, round(p, 4), 0.5))
    return ToolResult(expert="cxr_classification", arguments={}, findings=findings)


def lesion_sides(truth: dict, lesion: str) -> list[str]:
    """The sides of the body ("left", "right", in that order) the phantom's ``lesion`` components lie on: each centre against
    the midline (RAS x = 0, where the phantom's spine is), as ``experts.measurements.lesion_sides`` reads the expert's mask."""
    sides = {"left" if les["centre_mm"][0] < 0 else "right" for les in truth["lesions"] if les["type"] == lesion}
    return [s for s in ("left", "right") if s in sides]


def expert_dialogue(view: CaseView, rng: np.random.Generator) -> Dialogue:
    """One conversation about ``view``: an expert call with grounded answer and follow-ups (most cases),
    or a question answered without an expert (about one in five)."""
    if rng.random() < 0.2:
        return _no_expert(view, rng)
    return {"ct": _ct, "mri": _mri, "cxr": _cxr}[view.kind](view, rng)


def _val(m) -> str:
    """A measurement's number and unit exactly as ``Measurement.text`` prints it."""
    return f"{m.value:.0f}" if m.unit in ("count", "") else f"{m.value:.1f} {m.unit}"


def _call_turns(result, name: str, arguments: dict) -> list[dict]:
    return [{"from": "gpt", "value": format_tool_call(name, arguments)}, {"from": "tool", "value": format_tool_result(result)}]


def _m(result, structure: str, quantity: str):
    return next((m for m in result.measurements if m.structure == structure and m.quantity == quantity), None)


def _ref(key: str) -> str:
    return value_reference(key)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ct_lesion_answer(name: str) -> str:
    return f"{_cap(name)}s: {_ref(name)}."


def _ct_organ_answer(organ: str) -> str:
    return f"The {organ} volume is {_ref(organ + ' volume')}."


def _ct(view: CaseView, rng) -> Dialogue:
    if rng.random() < 0.25:
        return _ct_report(view, rng)
    truth = view.truth
    present = [o for o in (CT_LABELS[v] for v in CT_ORGANS) if truth["organ_volumes_ml"][o] > 0]
    lesion = CT_LABELS[int(rng.choice(CT_LESIONS))]
    organ = present[int(rng.integers(len(present)))] if present else "liver"
    mode = rng.choice(["organ", "lesion", "everything", "lesions", "organs"], p=[0.25, 0.3, 0.2, 0.15, 0.1])
    if mode == "organ":
        args = {"targets": organ}
        q = phrase("{What is|Measure|Can you measure|Tell me} the volume of the <o>{ in mL|}?", rng, o=organ)
    elif mode == "lesion":
        args = {"targets": lesion}
        # always about the whole study: "How many <x>s are there in this slice?" is a picture question (VQA)
        q = phrase("How many <x>s {does the patient have|are there in the whole scan|are in the whole study}{ and how big is the largest|}?", rng, x=lesion) \
            if rng.random() < 0.7 else phrase("{Count|Find and measure} the <x>s {in the whole scan|in the whole study|in all slices}.", rng, polite=False, x=lesion)
    elif mode == "lesions":
        args = {"targets": "lesions"}
        q = phrase("{Find all lesions|Check the scan for lesions|Look for lesions} and {measure them|give their sizes}.", rng, polite=False)
    elif mode == "organs":
        args = {"targets": "organs"}
        q = phrase("{Measure|Give me} the {volumes of all organs|organ volumes}{ in this CT|}.", rng, polite=False)
    else:
        args = {"targets": "everything"}
        q = phrase("{Please |}{segment everything|run a full segmentation|give me a complete quantitative analysis} {on this CT|of this scan|}.", rng, polite=False)
    result = tool_result_from_truth("ct", truth, args, rng)
    turns = [{"from": "human", "value": q}] + _call_turns(result, "ct_segmentation", args)
    if mode == "organ":
        answer = _ct_organ_answer(organ)
    elif mode == "lesion":
        answer = _ct_lesion_answer(lesion)
    else:
        answer = ct_summary_answer(result, mode)
    turns.append({"from": "gpt", "value": answer})
    # A follow-up answered from the same result (no second call).
    if mode in ("everything", "lesions"):
        other = CT_LABELS[int(rng.choice(CT_LESIONS))]
        turns += [{"from": "human", "value": phrase("{And|What about} the <x>s?", rng, polite=False, x=other)},
                  {"from": "gpt", "value": _ct_lesion_answer(other)}]
    if mode in ("everything", "organs") and present:
        o2 = present[int(rng.integers(len(present)))]
        turns += [{"from": "human", "value": phrase("How {large|big} is the <o>{ again|}?", rng, polite=False, o=o2)},
                  {"from": "gpt", "value": _ct_organ_answer(o2)}]
    return _dialogue(turns, [{"name": "ct_segmentation", "arguments": args}], [result])


def ct_summary_answer(result: ToolResult, mode: str) -> str:
    """The answer to a whole-study CT request (``mode`` "everything", "organs" or "lesions", the call's targets): each organ
    volume the result measured and each lesion type, as references."""
    organs = [m.structure for m in result.measurements if m.quantity == "volume" and _m(result, m.structure, "count") is None]
    parts = []
    if mode in ("everything", "organs"):
        parts.append("Organ volumes: " + "; ".join(f"{o} {_ref(o + ' volume')}" for o in organs) + ".")
    if mode in ("everything", "lesions"):
        parts += [_ct_lesion_answer(CT_LABELS[v]) for v in CT_LESIONS]
    return " ".join(parts)


def mri_summary_answer() -> str:
    """The answer to a brain-tumour segmentation request: presence, whole tumour and each sub-region's volume, as references."""
    sub = ", ".join(f"{n} {_ref(n + ' volume')}" for n in MRI_LABELS.values())
    return f"Brain tumor: {_ref('tumor')}. Whole tumor {_ref('whole tumor')} ({sub})."


def ct_report_answer(view: CaseView) -> str:
    """A CT report written with the segmentation expert's lesion result: the findings and impression name its finding lists;
    the model writes only what the picture shows (the body region)."""
    return (f"Findings: CT of the {view.facts['region']}, read with the CT segmentation expert on the whole study. "
            f"Present: {_ref('positive findings')}. Absent: {_ref('negative findings')}. Impression: {_ref('impression')}")


def cxr_report_answer(view: CaseView) -> str:
    """A radiograph report written with the classifier's result (VILA-M3's report with the expert); the model writes only
    the projection."""
    return (f"Findings: Frontal ({view.facts['view']}) chest radiograph, read with the chest X-ray classifier. "
            f"Present: {_ref('positive findings')}. Absent: {_ref('negative findings')}. Impression: {_ref('impression')}")


# A follow-up on a brain-tumour result, answered from the same result: question template, answer naming the fields.
_MRI_FOLLOW_UPS = {
    "core": ("{And|What is} the tumor core volume?", f"The tumor core (enhancing tumor plus necrotic core) is {_ref('tumor core volume')}."),
    "enhancing": ("Does it enhance{ after contrast|}?", f"Enhancing tumor: {_ref('enhancing tumor')}; volume {_ref('enhancing tumor volume')}."),
    "necrosis": ("{Is there|Any|Do you see} {central necrosis|a necrotic core|necrosis}?",
                 f"Necrosis: {_ref('necrosis')}; necrotic core volume {_ref('necrotic core volume')}."),
    "edema": ("{Is there|Any|Do you see} {peritumoral|surrounding|} edema?", f"Edema: {_ref('edema')}; volume {_ref('edema volume')}."),
    "side": ("Which {side|hemisphere} is it on?", f"The tumor is in the {_ref('hemisphere')}."),
}


def _mri(view: CaseView, rng) -> Dialogue:
    truth = view.truth
    args: dict = {}
    result = tool_result_from_truth("mri", truth, args, rng)
    q = phrase("{What is the tumor volume|Segment the brain tumor|Measure the tumor and its sub-regions|How large is the tumor in mL}?", rng)
    turns = [{"from": "human", "value": q}] + _call_turns(result, "mri_brain_tumor", args)
    turns.append({"from": "gpt", "value": mri_summary_answer()})
    if _m(result, "whole tumor", "volume").value > 0:
        question, answer = _MRI_FOLLOW_UPS[rng.choice(list(_MRI_FOLLOW_UPS))]
        turns += [{"from": "human", "value": phrase(question, rng, polite=False)}, {"from": "gpt", "value": answer}]
    return _dialogue(turns, [{"name": "mri_brain_tumor", "arguments": args}], [result])


def _cxr(view: CaseView, rng) -> Dialogue:
    args: dict = {}
    result = tool_result_from_truth("cxr", view.truth, args, rng)
    if rng.random() < 0.3:
        return _cxr_report(view, rng, result)

    def say(label: str) -> str:
        return f"{_cap(label)}: {_ref(label)}."

    if rng.random() < 0.5:
        first = CXR_FINDINGS[int(rng.integers(len(CXR_FINDINGS)))]
        # a probability from the classifier; "Is there a <x>?" is a VQA question, answered yes / no with the classifier
        q = phrase("{What is the probability of|How likely is|Run the classifier for|Get the classifier's probability of} <x>{ on this radiograph|}?", rng, x=first)
        answer = say(first)
    else:
        first = None
        q = phrase("{Classify this chest {X-ray|radiograph}{ for abnormalities| for findings|}|Run the finding classifier on this {X-ray|radiograph}|"
                   "Give me the finding probabilities{ for this radiograph|}}.", rng, polite=False)
        answer = "Findings: " + "; ".join(f"{f} {_ref(f)}" for f in CXR_FINDINGS) + "."
    turns = [{"from": "human", "value": q}] + _call_turns(result, "cxr_classification", args) + [{"from": "gpt", "value": answer}]
    others = [f for f in CXR_FINDINGS if f != first]
    second = others[int(rng.integers(len(others)))]
    turns += [{"from": "human", "value": phrase("{And|What about} <x>?", rng, polite=False, x=second)}, {"from": "gpt", "value": say(second)}]
    return _dialogue(turns, [{"name": "cxr_classification", "arguments": args}], [result])


def _cxr_report(view: CaseView, rng, result: ToolResult) -> Dialogue:
    """A report request on a radiograph, answered with the classifier (VILA-M3's report with the expert):
    the findings and impression name the result's finding lists, the model writes only what it sees
    (the projection)."""
    q = caption_prompt(rng)
    report = cxr_report_answer(view)
    turns = [{"from": "human", "value": q}] + _call_turns(result, "cxr_classification", {}) + [{"from": "gpt", "value": report}]
    return _dialogue(turns, [{"name": "cxr_classification", "arguments": {}}], [result])


def _ct_report(view: CaseView, rng) -> Dialogue:
    """A report request on a CT, answered with the segmentation expert on the whole study (its lesions
    and contrast phase): the findings and impression name the result's finding lists, the model writes
    only what it sees (the body region of the slice)."""
    args = {"targets": "lesions"}
    result = tool_result_from_truth("ct", view.truth, args, rng)
    report = ct_report_answer(view)
    turns = [{"from": "human", "value": caption_prompt(rng)}] + _call_turns(result, "ct_segmentation", args) + [{"from": "gpt", "value": report}]
    return _dialogue(turns, [{"name": "ct_segmentation", "arguments": args}], [result])


def grounded_dialogue(turns: list[dict], calls: list[dict], results: list, task: str = "expert", info: dict | None = None) -> Dialogue:
    """A conversation whose answers name tool-result fields (``[[liver volume]]``); ``grounded_values`` are
    the values they stand for (what the resolved answers must quote). Raises ``AssertionError`` when an answer names a
    field no tool result holds (a generator bug)."""
    tools = [t["value"] for t in turns if t["from"] == "tool"]
    used: list[str] = []
    for t in turns:
        if t["from"] == "gpt" and REF_OPEN in t["value"]:
            text, missing = resolve_references(t["value"], tools)
            if missing:
                raise AssertionError(f"generator wrote references no tool result holds: {missing}")
            used += [v for v in _NUMBER.findall(text)]
    return Dialogue(turns, calls, used, task, results=results, info=dict(info or {}))


_dialogue = grounded_dialogue


def _no_expert(view: CaseView, rng) -> Dialogue:
    """Questions answered from the picture or general knowledge: no tool call."""
    f = view.facts
    options = [
        (phrase("What {imaging |}modality is this?", rng), f"This is {'an' if f['modality'] in ('MRI', 'X-ray') else 'a'} {f['modality']} image."),
        (phrase("{Which|What} body region is shown?", rng), f"The {f['region']}."),
    ]
    if view.kind == "ct":
        options.append((phrase("What does HU stand for{ on CT|}?", rng),
                        "Hounsfield units: CT attenuation relative to water (0 HU) and air (-1000 HU)."))
        options.append((phrase("What is the usual soft-tissue window{ on CT|}?", rng),
                        "Level 40 HU, width 400 HU: soft tissue grey, fat dark, bone and contrast-filled vessels bright."))
    elif view.kind == "mri":
        options.append((phrase("What is FLAIR {used for|good at}?", rng),
                        "FLAIR suppresses the CSF signal, so edema and other T2-bright lesions next to the ventricles stand out."))
    else:
        options.append((phrase("Can you measure the heart volume{ on this radiograph|}?", rng),
                        "Not from a single radiograph: volumes need a CT. On this image the heart size is judged by the cardiothoracic ratio."))
        options.append((phrase("What is the cardiothoracic ratio{ used for|}?", rng),
                        "It is the widest heart diameter divided by the widest inner chest diameter; above 0.5 on a PA film suggests cardiomegaly."))
    q, a = options[int(rng.integers(len(options)))]
    return Dialogue([{"from": "human", "value": q}, {"from": "gpt", "value": a}], [], [], "no-expert")
