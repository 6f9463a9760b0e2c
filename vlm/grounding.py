"""What a parsed question (``vlm.intent.QuestionIntent``) decides before and after the model writes.

* ``header_answer``: modality and series questions are answered from the study's de-identified header, never from
  the picture.
* ``planned_call``: a question that needs a measurement the conversation does not hold yet gets its expert call
  from the question — the expert that reads this study, its arguments narrowed to what the question names (the
  ``tool_choice`` of an OpenAI-style API, chosen by the parser) — so a small model's slip to another expert or
  another organ cannot happen; the model then writes the answer from the result.
* ``cite_results``: an answer that rests on an expert result ends with the result fields that answer the question,
  in words ("Expert result (ct_segmentation) — liver tumor: yes (1 found, …)"); a leading yes / no that contradicts
  them is corrected and the turn flagged.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from data.lexicon import TERMS
from data.slice_facts import IN_SLICE
from data.tool_text import ToolResult, resolve_references, value_reference
from experts.base import Expert
from vlm.intent import QuestionIntent

__all__ = ["header_answer", "planned_call", "question_arguments", "cite_results", "MODALITY_WORDS"]

MODALITY_WORDS = {"CT": "CT (computed tomography)", "MR": "MRI (magnetic resonance imaging)",
                  "DX": "radiograph (X-ray)", "CR": "radiograph (X-ray)", "OT": "image", "US": "ultrasound",
                  "SC": "secondary capture", "SEG": "segmentation"}


def header_answer(intent: QuestionIntent, volumes: Mapping[str, Any]) -> str | None:
    """The answer to a modality or series question from the loaded series' headers (``Volume.modality``,
    ``description``, ``sequence``); None for other questions."""
    if intent.family not in ("modality", "series") or not volumes:
        return None
    series = list(volumes.values())
    kinds = list(dict.fromkeys(MODALITY_WORDS.get(v.modality, v.modality) for v in series))
    if intent.family == "modality":
        return (f"This study is {' and '.join(_a(k) for k in kinds)}, read from the DICOM header "
                f"({len(series)} series).")
    rows = []
    for v in series:
        name = v.sequence or v.description or v.modality
        extra = f" ({v.description})" if v.sequence and v.description and v.description != v.sequence else ""
        rows.append(f"{name}{extra}: {MODALITY_WORDS.get(v.modality, v.modality)}, {v.array.shape[2]} slice{'s' if v.array.shape[2] != 1 else ''}")
    return f"The study holds {len(series)} series: " + "; ".join(rows) + "."


def planned_call(intent: QuestionIntent, experts: Mapping[str, Expert], done: Sequence[Any]) -> tuple[str, dict[str, Any]] | None:
    """(expert name, arguments) for the call the question needs, or None when it needs none, no expert reads the
    study, or an earlier successful call in ``done`` (``ToolCall``s) already covers it."""
    if not intent.needs_expert or not intent.experts:
        return None
    name = next((n for n in intent.experts if n in experts), None)
    if name is None:
        return None
    expert = experts[name]
    arguments = question_arguments(expert, intent)
    for call in done:
        if call.name == name and call.result is not None and _covers(expert, call.arguments, arguments):
            return None
    return name, arguments


def cite_results(intent: QuestionIntent, answer: str, sources: Sequence[ToolResult | str],
                 summaries: Sequence[str] = ()) -> tuple[str, list[str]]:
    """(the answer with the fields that answer ``intent`` cited after it, flags). ``sources``: the conversation's
    results, oldest first (``ExpertResult`` objects; tool message texts for text-only callers); ``summaries``: this turn's result summaries (cited for report, run and segment
    requests). Fields the answer already states are not repeated; a leading yes / no against the first field's is
    replaced by it."""
    flags: list[str] = []
    cited: list[str] = []
    values = {}
    for key in intent.answer_keys():
        value, missing = resolve_references(value_reference(key), sources)
        if not missing:
            values[key] = value
    # a field of the slice on screen answers before its whole-study twin ("kidney cyst in this slice side" before "kidney cyst side")
    values = {k: v for k, v in values.items() if not any(IN_SLICE in o and o.replace(IN_SLICE, "") == k for o in values)}
    answer, trimmed = _trim(answer, list(values.values()))
    if trimmed:
        flags.append("answer trimmed to the question")
    if values and answer.strip().rstrip(".") in values.values():  # a bare value: say what it is
        key = next(k for k, v in values.items() if v == answer.strip().rstrip("."))
        answer = _sentence(key, values[key], lead_with_value=True)  # a closed question's answer leads
    for key, value in values.items():
        if _states(answer, value) and not (intent.negated and _label(key) not in answer.lower()):
            continue
        cited.append(_sentence(key, value).rstrip("."))
    verdict = _first_verdict(intent, sources)
    lead = re.match(r"^\s*(yes|no)\b", answer, re.IGNORECASE)
    if verdict is not None and lead and (lead.group(1).lower() == "yes") != verdict:
        answer = ("Yes" if verdict else "No") + answer[lead.end():]
        flags.append("answer corrected to the expert result")
    compared = _comparison(intent, values) if any(p.family == "comparison" for p in intent.all_parts) else ""
    if compared:
        cited.insert(0, compared)
    if intent.family in ("run_expert", "segment_all"):  # the whole result, unless the answer states all of it
        cited += [s.rstrip(".") for s in summaries if not _states(answer, s)]
    elif intent.family == "report" and not re.search(r"\d", answer):  # a report the model wrote stands; none: the result's
        cited += [s.rstrip(".") for s in summaries if s not in answer]
    if cited:
        answer = (answer.rstrip() + "\n\n" if answer.strip() else "") + "Expert result — " + "; ".join(cited) + "."
    return answer, flags


# ---------------------------------------------------------------------------------------------------------


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" or kind.startswith(("MRI", "X")) else "a ") + kind


def _choices(expert: Expert, argument: str) -> list[str]:
    spec = dict(expert.parameters.get("properties", {})).get(argument, {})
    enum = spec.get("enum") or (spec.get("items") or {}).get("enum") or []
    for alt in spec.get("anyOf", []) or spec.get("oneOf", []):
        enum = enum or alt.get("enum") or (alt.get("items") or {}).get("enum") or []
    return [c for c in enum if isinstance(c, str)]


def question_arguments(expert: Expert, intent: QuestionIntent) -> dict[str, Any]:
    """Arguments naming what the question names, per argument with choices (``targets``); the expert's defaults
    for anything it does not name, and for whole-study requests."""
    if intent.family == "segment_all":  # everything an argument can name: its default ("everything") or all its choices
        props = dict(expert.parameters.get("properties", {}))
        return {a: spec["default"] for a, spec in props.items() if isinstance(spec, dict) and "default" in spec}
    if intent.family in ("report", "run_expert", "normality") and not (intent.family == "normality" and intent.terms):
        return {}
    out: dict[str, Any] = {}
    for argument in dict(expert.parameters.get("properties", {})):
        choices = _choices(expert, argument)
        if not choices:
            continue
        picked: list[str] = []
        for key in intent.terms:
            if key in choices:
                picked.append(key)
                continue
            organ = key[:-1] if key.endswith("s") else key  # "kidneys" → both kidneys
            picked += [c for c in choices if c in TERMS and TERMS[c].organ == organ and TERMS[c].kind == "organ"]
        picked = list(dict.fromkeys(picked))
        if picked:
            out[argument] = picked[0] if len(picked) == 1 else picked
    return out


def _covers(expert: Expert, have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    if not want:
        return not have
    for argument, value in want.items():
        values = [value] if isinstance(value, str) else list(value)
        if argument not in have and have:
            return False
        if argument in have and not all(expert.covers(argument, have[argument], v) for v in values):
            return False
    return True


def _comparison(intent: QuestionIntent, values: Mapping[str, str]) -> str:
    """"The liver is larger than the spleen (1133.7 mL vs 108.1 mL)" from two cited volumes; "" without two."""
    volumes = []
    for key, value in values.items():
        number = re.match(r"\s*(\d+(?:\.\d+)?)\s*mL", value)
        if key.endswith(" volume") and number:
            volumes.append((key[: -len(" volume")], float(number.group(1)), value))
    if len(volumes) < 2:
        return ""
    (a, va, ta), (b, vb, tb) = volumes[:2]
    if va == vb:
        return f"The {a} and the {b} have the same volume ({ta})"
    big, small = ((a, ta), (b, tb)) if va > vb else ((b, tb), (a, ta))
    return f"The {big[0]} is larger than the {small[0]} ({big[1]} vs {small[1]})"


def _trim(answer: str, values: list[str]) -> tuple[str, bool]:
    """The answer up to the clause that states the last of ``values`` it states: what a small model writes after
    the answer (another structure's field, "(not in the expert result)") is dropped. Unchanged when it states none."""
    clauses = re.split(r"(?<=[.;])\s+", answer.strip())
    last = max((i for i, c in enumerate(clauses) if any(_states(c, v) for v in values)), default=-1)
    if last < 0 or last == len(clauses) - 1:
        return answer, False
    return " ".join(clauses[:last + 1]).rstrip(";,") .rstrip() + ("" if clauses[last].rstrip().endswith(".") else "."), True


def _states(answer: str, value: str) -> bool:
    """Whether the answer already gives ``value`` (its numbers, or its words when it has none)."""
    numbers = re.findall(r"\d+(?:\.\d+)?", value)
    if numbers:
        return all(n in answer for n in numbers)
    return value.lower() in answer.lower()


def _sentence(key: str, value: str, lead_with_value: bool = False) -> str:
    """A result field in words: "Kidney cyst: 3 found, …", "Not normal: nodule (0.64).", "Larger kidney: the right …"."""
    yes = value.startswith("yes")
    detail = value[value.find("(") + 1:value.rfind(")")] if "(" in value else ""
    if key == "normal?" or key.endswith(" normal?"):
        return ("Yes, normal" if yes else "No, not normal") + (f": {detail}" if detail else "") + "."
    if lead_with_value and key.endswith("?") and value.startswith(("yes", "no")):  # a closed question: yes / no first
        return ("Yes" if yes else "No") + f" ({_label(key)}" + (f": {detail}" if detail else "") + ")."
    label = _label(key)
    if not lead_with_value:
        return f"{label[:1].upper()}{label[1:]}: {value}."
    counted = re.match(r"(\d+) found(.*)$", value)
    if counted:  # "3 found, volume …" → "3 kidney cysts found, volume …": the number first, then what was counted
        n = int(counted.group(1))
        return f"{n} {label}{'' if n == 1 else 's'} found{counted.group(2)}."
    if value == "none found":
        return f"No {label} found."
    if set(label.split()) <= set(value.lower().replace("(", " ").split()):
        return value + "."
    return f"{value} — {label}."  # the value first: a closed question's answer leads


def _label(key: str) -> str:
    if key.endswith(" normal?"):
        return f"normal ({key[:-len(' normal?')]} absent)"
    if key == "normal?":
        return "normal study"
    for suffix in (" side", " size"):  # "kidney cyst side" → "side of the kidney cyst"
        if key.endswith(suffix):
            return f"{suffix.strip()} of the {key[: -len(suffix)]}"
    return key.rstrip("?")


def _first_verdict(intent: QuestionIntent, sources: Sequence[ToolResult | str]) -> bool | None:
    """The yes / no of the first answer field when the question is a yes / no one (None otherwise)."""
    if intent.form != "yes_no" or intent.negated:
        return None
    keys = [k for k in intent.answer_keys() if k.endswith("?")]
    if not keys:
        return None
    value, missing = resolve_references(value_reference(keys[0]), sources)
    if missing or not value.startswith(("yes", "no")):
        return None
    return value.startswith("yes")
