"""What a parsed question (``vlm.intent.QuestionIntent``) decides before and after the model writes.

* ``header_answer``: modality and series questions are answered from the study's de-identified header, never from
  the picture.
* ``planned_call``: a question that needs a measurement the conversation does not hold yet gets its expert call
  from the question — the expert that reads this study, its arguments narrowed to what the question names (the
  ``tool_choice`` of an OpenAI-style API, chosen by the parser) — so a small model's slip to another expert or
  another organ cannot happen; the model then writes the answer from the result.
* ``cite_results``: an answer that rests on an expert result states the result fields that answer the question —
  the model's own words when they stand and state them, else the fields in words, the direct answer first — and
  ends with the experts it rests on ("Source: ct_segmentation result."); a leading yes / no that contradicts them is
  corrected and the turn flagged.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from data.lexicon import TERMS, find_terms
from data.slice_facts import IN_SLICE
from data.tool_text import ToolResult, fields_of, resolve_references, value_reference
from experts.base import Expert
from vlm.answer_text import (
    comparison_sentence,
    field_label,
    field_sentence,
    standing_clauses,
    states,
)
from vlm.intent import QuestionIntent

__all__ = ["header_answer", "planned_call", "question_arguments", "cite_results", "relevant_doubts", "MODALITY_WORDS"]

MODALITY_WORDS = {"CT": "CT (computed tomography)", "MR": "MRI (magnetic resonance imaging)",
                  "DX": "radiograph (X-ray)", "CR": "radiograph (X-ray)", "OT": "image", "US": "ultrasound",
                  "SC": "secondary capture", "SEG": "segmentation"}


_MODALITY_NAMES = {"CT": r"\bct\b|\bcomputed tomography\b|\bcat scan\b", "MR": r"\bmri?\b|\bmagnetic resonance\b",
                   "CR": r"\bx-?ray\b|\bradiograph\b|\bcxr\b|\bplain film\b"}


def header_answer(intent: QuestionIntent, volumes: Mapping[str, Any]) -> str | None:
    """The answer to a modality or series question from the loaded series' headers (``Volume.modality``,
    ``description``, ``sequence``); None for other questions."""
    if intent.family not in ("modality", "series") or not volumes:
        return None
    series = list(volumes.values())
    kinds = list(dict.fromkeys(MODALITY_WORDS.get(v.modality, v.modality) for v in series))
    if intent.family == "modality":
        said = f"his study is {' and '.join(_a(k) for k in kinds)}, read from the DICOM header ({len(series)} series)."
        q = intent.text.lower()
        named = {m: re.search(pattern, q) for m, pattern in _MODALITY_NAMES.items()}
        named = {m: found.group(0) for m, found in named.items() if found}
        have = {"CR" if v.modality == "DX" else v.modality for v in series}
        if named and intent.form == "yes_no":  # "Is this a CT?": yes / no first
            return ("Yes" if set(named) & have else "No") + ", t" + said
        chosen = [word for m, word in named.items() if m in have]
        if len(named) > 1 and chosen:  # "a CT or an MRI?": the option first, as the question wrote it
            word = chosen[0]
            return (word.upper() if len(word) <= 3 else word[:1].upper() + word[1:]) + " — t" + said
        return "T" + said
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
    ran = [call.arguments for call in done if call.name == name and call.result is not None]
    if not arguments and _whole_study(intent):  # a report or a whole-study verdict needs every finding the expert reports
        props = dict(expert.parameters.get("properties", {}))
        arguments = {a: spec["default"] for a, spec in props.items() if isinstance(spec, dict) and "default" in spec}
        findings = {a: [c for c in _choices(expert, a) if c in TERMS and TERMS[c].kind in ("lesion", "finding")] for a in props}
        needed = {a: v for a, v in findings.items() if v} or arguments  # a lesions run covers a report; an organs run does not
        if ran and any(_covers(expert, have, needed) for have in ran):
            return None
        return name, ({} if not ran else arguments)
    if ran and not arguments:  # the question names nothing of its own: the expert's run answers it
        return None
    if any(_covers(expert, have, arguments) for have in ran):
        return None
    if ran and arguments:  # a call that covered part of the question ("spleen volume and liver lesions?"): the rest
        rest = {}
        for argument, value in arguments.items():
            values = [value] if isinstance(value, str) else list(value)
            left = [v for v in values if not any(_covers(expert, have, {argument: v}) for have in ran)]
            if left:
                rest[argument] = left[0] if len(left) == 1 else left
        arguments = rest or arguments
    return name, arguments


def cite_results(intent: QuestionIntent, answer: str, sources: Sequence[ToolResult | str],
                 summaries: Sequence[str] = (), titles: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """(the answer as the user reads it, flags). ``sources``: the conversation's results, oldest first
    (``ExpertResult`` objects; tool message texts for text-only callers); ``summaries``: this turn's result summaries
    (cited for report, run and segment requests).

    The model's clauses that cannot stand (``vlm.answer_text.standing_clauses``) are dropped. When what remains states
    every field that answers the question, it is the answer; otherwise the answer is those fields in words, the direct
    answer first (flag ``answer composed from the expert result``). A leading yes / no against the expert is corrected.
    The answer ends with the experts whose results it rests on, by their ``titles`` (expert name → what a clinician
    sees, ``Expert.title``) where given."""
    flags: list[str] = []
    values, experts = _answer_values(intent, sources)
    known = _known_texts(sources) + list(summaries)
    text, dropped = standing_clauses(answer, known, intent.text, [k for source in sources for k in fields_of(source)],
                                     drop_ungrounded=bool(values) or bool({p.family for p in intent.all_parts} & {"report", "run_expert", "segment_all"}))
    if dropped:
        flags.append("model text dropped: " + str(len(dropped)) + " unsupported or malformed clause" + ("s" if len(dropped) > 1 else ""))
    verdict = _first_verdict(intent, sources)
    lead = re.match(r"^\s*(yes|no)\b", text, re.IGNORECASE)
    if verdict is not None and lead and (lead.group(1).lower() == "yes") != verdict:
        text = ("Yes" if verdict else "No") + text[lead.end():]
        flags.append("answer corrected to the expert result")
    families = {p.family for p in intent.all_parts}
    if values:
        text, trimmed = _trim(text, list(values.values())) if not families & {"report", "run_expert", "segment_all"} else (text, False)
        if trimmed:
            flags.append("answer trimmed to the question")
        compared = comparison_sentence(values) if "comparison" in families else ""
        bare = text.strip().rstrip(".").lower() in {v.lower() for v in values.values()}  # a value without what it is
        # a comparison is said by the fields: which side is larger is not left to the model's wording
        stated = not bare and "comparison" not in families and all(states(text, v, k) and not (intent.negated and field_label(k) not in text.lower())
                                                                   and not (k.endswith("normal?") and not _VERDICT.search(text)) for k, v in values.items())
        if not stated:
            lead_sentences = [compared + "."] if compared else []
            lead_sentences += [field_sentence(k, v, lead=True, wh=intent.form == "wh", negated=intent.negated,
                                              asks_abnormal=not intent.asks_normal, counts=intent.asks_count)
                               for k, v in values.items()
                               if not (compared and k.endswith(" volume"))]
            text = " ".join(lead_sentences)
            flags.append("answer composed from the expert result")
    for key in [k for k in intent.answer_keys() if k.endswith((" size", " side")) and k not in values]:
        subject, what = key.rsplit(" ", 1)
        presence, missing = resolve_references(value_reference(f"{subject}?"), sources)
        named = {m.key for m in find_terms(text)}
        if not missing and named and subject not in named:  # the model wrote about another finding: the asked one's state
            text = field_sentence(f"{subject}?", presence, lead=True) + f" The expert gives no {what} for the {subject}."
            flags.append("answer composed from the expert result")
    extra: list[str] = []
    # a result another of this turn's results holds in full (an organs run, then the whole run) is said once
    summaries = list(dict.fromkeys(summaries))
    summaries = [s for i, s in enumerate(summaries) if not any(j != i and t != s and states(t, s) for j, t in enumerate(summaries))]
    if families & {"run_expert", "segment_all"}:  # the whole result, unless the answer states all of it
        extra = [s.rstrip(".") + "." for s in summaries if not states(text, s)]
    elif "report" in families and not all(states(text, s) for s in summaries):
        # a report that leaves out part of the result is not the report: the impression and every result, in full
        text = field_sentence("impression", values["impression"], lead=True) if "impression" in values else ""
        extra = [s.rstrip(".") + "." for s in summaries]
        flags.append("answer composed from the expert result")
    elif not text.strip() and summaries:  # nothing of the model's stands and no field answers: the result itself
        extra = [s.rstrip(".") + "." for s in summaries]
        flags.append("answer composed from the expert result")
    answer = "\n\n".join(p for p in (text.strip(), " ".join(extra)) if p)
    if experts and answer:
        named = [(titles or {}).get(e) or e for e in experts]
        answer += "\n\nSource: " + ", ".join(named) + (" result." if len(named) == 1 else " results.")
    return answer, list(dict.fromkeys(flags))


# a normality answer says normal or abnormal in words ("no (liver tumor, lung nodule)" copies the field, not a verdict)
_VERDICT = re.compile(r"\b(?:ab)?normal\b|\bunremarkable\b|\bhealthy\b|^\s*none\b|\bno (?:abnormalit|finding)", re.IGNORECASE)


def relevant_doubts(intent: QuestionIntent, reasons: Sequence[str]) -> list[str]:
    """The reasons an expert gave for doubting its result that bear on the question: a reason naming none of the
    structures the question asks about (a lung nodule's density, asked about a kidney) is left out; reasons naming no
    structure, and every reason for a report or a whole-result request, are kept."""
    if {p.family for p in intent.all_parts} & {"report", "run_expert", "segment_all", "normality", "other"} or not intent.terms:
        return list(reasons)
    asked = set(intent.terms) | {TERMS[t].organ for t in intent.terms if t in TERMS and TERMS[t].organ}
    asked |= {k.rstrip("s") for k in asked}
    out = []
    for reason in reasons:
        named = {m.key for m in find_terms(reason)}
        named |= {TERMS[k].organ for k in named if k in TERMS and TERMS[k].organ}
        if not named or named & asked or {n.rstrip("s") for n in named} & asked:
            out.append(reason)
    return out


def _answer_values(intent: QuestionIntent, sources: Sequence[ToolResult | str]) -> tuple[dict[str, str], list[str]]:
    """(key → value of the fields that answer the question, the experts reporting them)."""
    values: dict[str, str] = {}
    experts: list[str] = []
    keys: list[str] = []
    for key in intent.answer_keys():
        pair = re.fullmatch(r"(?:larger|smaller) (kidney|lung)", key)
        if pair and resolve_references(value_reference(key), sources)[1]:  # each side measured by its own call
            keys += [f"left {pair.group(1)} volume", f"right {pair.group(1)} volume"]
        else:
            keys.append(key)
    for key in keys:
        value, missing = resolve_references(value_reference(key), sources)
        if not missing:
            values[key] = value
            name = next((f.expert for f in map(fields_of, reversed(list(sources))) if f.value(key) is not None), "")
            if name and name not in experts:
                experts.append(name)
    # a field of the slice on screen answers before its whole-study twin ("kidney cyst in this slice side" before "kidney cyst side")
    values = {k: v for k, v in values.items() if not any(IN_SLICE in o and o.replace(IN_SLICE, "") == k for o in values)}
    return values, experts


def _known_texts(sources: Sequence[ToolResult | str]) -> list[str]:
    """What the results say, as text: their tool messages and every field's value (numbers and structures an answer
    may state)."""
    out = []
    for source in sources:
        fields = fields_of(source)
        out.append(fields.tool_text())
        out.append(" ".join(f"{k}: {f.value}" for k, f in fields.items()))
    return out


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
        if any(p.family == "comparison" for p in intent.all_parts):  # "is the right kidney bigger than the left?": both sides
            picked += [c for k in picked for c in choices if re.fullmatch(r"(?:left|right) " + re.escape(k.split(" ", 1)[-1]), c)
                       and k.split(" ", 1)[0] in ("left", "right")]
        picked = list(dict.fromkeys(picked))
        if picked:
            out[argument] = picked[0] if len(picked) == 1 else picked
    return out


def _whole_study(intent: QuestionIntent) -> bool:
    """Whether the question is about the whole study (a report, "run the expert", "is this scan normal?")."""
    return any(p.family in ("report", "run_expert") or (p.family == "normality" and not p.terms) for p in intent.all_parts)


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


def _trim(answer: str, values: list[str]) -> tuple[str, bool]:
    """The answer up to the clause that states the last of ``values`` it states: what a small model writes after
    the answer (another structure's field, "(not in the expert result)") is dropped. Unchanged when it states none."""
    clauses = re.split(r"(?<=[.;])\s+", answer.strip())
    last = max((i for i, c in enumerate(clauses) if any(states(c, v) for v in values)), default=-1)
    if last < 0 or last == len(clauses) - 1:
        return answer, False
    return " ".join(clauses[:last + 1]).rstrip(";,") .rstrip() + ("" if clauses[last].rstrip().endswith(".") else "."), True


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
    if keys[0].endswith("normal?") and not intent.asks_normal:  # "anything abnormal?": yes means not normal
        return not value.startswith("yes")
    return value.startswith("yes")
