"""Baselines ``m3 eval`` scores beside the model on the same items, through the same agent and experts.

``KeywordRouterBackend`` is the simplest honest alternative to the learned model: it reads the last question,
picks an expert by keywords, calls it in the project's format (``data.tool_text.format_tool_call``) and answers
with a templated sentence that names the result field whose words best match the question (``[[liver volume]]``),
which the agent fills in. It never looks at a picture; a question it cannot route it answers "uncertain".
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from data.tool_text import format_tool_call, parse_tool_result, reference_keys, value_reference
from vlm.backends.base import BackendInfo, GenerationConfig

__all__ = ["KeywordRouterBackend", "BASELINES", "UNCERTAIN"]

UNCERTAIN = "Uncertain: I cannot tell which expert answers this question, and I do not read the pictures."

# A baseline, not a model: fixed keyword rules, nothing learned.
# Expert → (pattern, weight) cues; the expert with the highest total wins, a tie routes nowhere.
_EXPERT_CUES: dict[str, list[tuple[str, int]]] = {
    "ct_segmentation": [(r"\bct\b|computed tomograph|hounsfield|\bhu\b|attenuation", 3), (r"\bslice\b", 1),
                        (r"\b(?:organs?|lesions?|segment\w*|phase|contrast)\b", 1)],
    "mri_brain_tumor": [(r"\bmri?\b|\bmr\b|flair|\bt1c?\b|\bt2\b|magnetic", 3), (r"\bbrain\b|glio\w*|hemispheres?|\blobe\b|cerebr\w*", 3),
                        (r"\bedema\b|enhanc\w*|necro\w*|tumor core|whole tumor", 2), (r"\btumors?\b", 1), (r"\bslice\b", 1)],
    "cxr_classification": [(r"x-?ray|radiograph|\bcxr\b|\bfilm\b", 3),
                           (r"cardiomegaly|effusion|pneumothora\w*|consolidation|pneumonia|cardiothoracic|heart size", 3),
                           (r"\bnodules?\b|classif\w*|probabilit\w*", 1)],
}
# CT structures the question names → ``targets`` choices; lesions first, so "liver tumor" does not also mean the liver
_CT_LESIONS = {"liver tumor": r"\b(?:liver|hepatic) (?:tumors?|lesions?|mass(?:es)?|metasta\w*)",
               "lung nodule": r"\b(?:lung|pulmonary) (?:nodules?|lesions?|mass(?:es)?)",
               "kidney cyst": r"\b(?:(?:kidney|renal) (?:lesions?|cysts?)|cysts?)\b"}
_CT_ORGANS = {"liver": r"\b(?:liver|hepatic)\b", "spleen": r"\b(?:spleen|splenic)\b", "kidney": r"\b(?:kidneys?|renal)\b", "lung": r"\blungs?\b",
              "heart": r"\b(?:heart|cardiac)\b", "aorta": r"\b(?:aorta|aortic)\b", "spine": r"\b(?:spine|spinal|vertebra\w*)\b"}
_CT_GROUPS = {"lesions": r"\blesions?\b", "organs": r"\borgans?\b", "everything": r"\beverything\b|full segmentation|complete|all structures"}
# words of a question mapped onto the words of result fields
_SYNONYMS = {"tumour": "tumor", "oedema": "edema", "hepatic": "liver", "renal": "kidney", "pulmonary": "lung", "cardiac": "heart",
             "splenic": "spleen", "aortic": "aorta", "enlarged heart": "cardiomegaly", "heart enlarged": "cardiomegaly",
             "heart is enlarged": "cardiomegaly", "cardiothoracic ratio": "cardiomegaly", "collapsed lung": "pneumothorax",
             "pneumonia": "consolidation", "pleural fluid": "pleural effusion", "side of the brain": "hemisphere", "necrotic": "necrosis"}
_STOP = {"in", "on", "the", "this", "of", "a", "an", "is", "are", "there", "any", "what", "how", "and", "to", "me", "please", "you"}
_GENERIC = {"volum", "large", "diame", "count", "size", "side", "mean", "atten", "measu", "find", "found", "proba", "slice", "phase"}
_SLICE = re.compile(r"\bslice\b|\bhere\b|this image")
_REPORT = re.compile(r"\b(?:caption|describe|description|report|summar\w*|impression|interpret)\b|what do you see|which (?:abnormalities|findings)")
_SIDE = re.compile(r"which side|left or (?:the )?right|hemisphere|laterality|\bside\b")
_SIZE = re.compile(r"small, medium or large|small or large")
_COUNT = re.compile(r"how many|number of|\bcount\b")
_MEASURE = re.compile(r"volume|how (?:big|large)|\bsize\b|measure|\bml\b|diameter")
_YES_NO = re.compile(r"(?:^|[:,] )(?:is|are|does|do|did|can|could|was|were|has|have|any)\b|present or absent|yes or no")


class KeywordRouterBackend:
    """A ``ChatBackend`` that routes by keywords (see the module docstring); ``tools`` are the experts offered."""

    info = BackendInfo(name="keyword-router baseline", version="1", takes_images=False,
                       model_card="A keyword router with templated answers over the experts: a baseline, not a model.")

    def stream_chat(self, messages: list[dict[str, Any]], images: Any = None, tools: list[dict[str, Any]] | None = None,
                    config: GenerationConfig | None = None, cache_key: str | None = None, constraints: Any = None) -> Iterator[str]:
        """One reply: a tool call when the question's expert has not answered yet, else the templated answer (its
        templates name only the results' fields: ``constraints`` have nothing to keep it on)."""
        last_user = max((k for k, m in enumerate(messages) if m["role"] == "user"), default=-1)
        question = _normalise(str(messages[last_user]["content"]).replace("<image>", " ")) if last_user >= 0 else ""
        after = [m for m in messages[last_user + 1:] if m["role"] == "tool"]
        if after:
            texts = [str(m["content"]) for m in after]
            if all(_is_error(t) for t in texts):
                yield f"Uncertain: the {after[-1].get('name', 'expert')} expert could not answer this question on this study."
                return
            yield _answer(question, texts + _earlier_results(messages[:last_user]), fresh=True)
            return
        earlier = _earlier_results(messages[:last_user])
        if earlier and _best_keys(question, _fields(earlier), specific=True):  # a follow-up the last result answers
            yield _answer(question, earlier, fresh=False)
            return
        offered = {t["function"]["name"]: t["function"] for t in tools or [] if "function" in t}
        name = _route(question, offered, _last_expert(messages[:last_user]))
        if name is None:
            yield UNCERTAIN
            return
        yield format_tool_call(name, _arguments(question, offered[name]))


BASELINES = {"keyword": KeywordRouterBackend}


# ---- routing -----------------------------------------------------------------------------------------
def _route(question: str, offered: dict[str, dict], last_expert: str | None) -> str | None:
    """The expert the question's keywords name (highest cue score over every known expert); None when two tie or the
    one named is not offered. A question naming none goes to the one expert offered, or to this conversation's expert."""
    scores = {name: sum(w for pattern, w in _EXPERT_CUES.get(name, []) if re.search(pattern, question)) for name in {**_EXPERT_CUES, **offered}}
    if _ct_structures(question):
        scores["ct_segmentation"] += 2
    best = max(scores.values(), default=0)
    top = [n for n, s in scores.items() if s == best]
    if best == 0:
        return next(iter(offered)) if len(offered) == 1 else (last_expert if last_expert in offered else None)
    if len(top) > 1:
        return last_expert if last_expert in top and last_expert in offered else None
    return top[0] if top[0] in offered else None


def _ct_structures(question: str) -> list[str]:
    """``targets`` choices the question names, in the order of ``_CT_LESIONS`` then ``_CT_ORGANS``."""
    found, rest = [], question
    for name, pattern in _CT_LESIONS.items():
        if re.search(pattern, rest):
            found.append(name)
            rest = re.sub(pattern, " ", rest)
    hosts = {name.split()[0] for name in found}  # "kidney cyst" names the kidney as its site, not as a target
    for name, pattern in _CT_ORGANS.items():
        if name not in hosts and re.search(pattern, rest):
            sides = [s for s in ("left", "right") if re.search(rf"\b{s}\b", question)] if name in ("kidney", "lung") else [""]
            found += [f"{s} {name}".strip() for s in (sides or ["left", "right"])]
    return found


def _arguments(question: str, tool: dict) -> dict[str, Any]:
    if "targets" not in tool.get("parameters", {}).get("properties", {}):
        return {}
    targets = _ct_structures(question)
    if not targets:
        if re.search(r"\bphase\b|\bcontrast\b", question):
            targets = ["aorta"]  # the expert reads the phase from the aorta's enhancement (its description)
        else:
            targets = [next((g for g, p in _CT_GROUPS.items() if re.search(p, question)), "everything")]
    return {"targets": targets[0] if len(targets) == 1 else targets}


# ---- answers -----------------------------------------------------------------------------------------
def _answer(question: str, tool_texts: list[str], *, fresh: bool) -> str:
    keys = _fields(tool_texts)
    if _REPORT.search(question) and "impression" in keys:
        return (f"Present: {value_reference('positive findings')}. Absent: {value_reference('negative findings')}. "
                f"Impression: {value_reference('impression')}")
    picked = _best_keys(question, keys, specific=not fresh)
    if not picked:  # the question names no field: the whole result
        picked = [k for k in keys if k.endswith(" volume") or k + " count" in keys] + (["impression"] if "impression" in keys else [])
    return " ".join(_sentence(k, keys) for k in picked)


def _best_keys(question: str, keys: list[str], *, specific: bool) -> list[str]:
    """The fields of ``keys`` the question asks for: its intent picks the kind of field, the most shared words
    the field (every field tied at the best score). specific: only fields sharing a word with the question."""
    if _SIDE.search(question):
        pool = [k for k in keys if k.endswith(" side") or k == "hemisphere"]
    elif _SIZE.search(question):
        pool = [k for k in keys if k.endswith(" size")]
    elif re.search(r"\bphase\b", question):
        pool = [k for k in keys if k == "phase"]
    elif _COUNT.search(question) or _MEASURE.search(question):
        pool = [k for k in keys if k + " count" in keys or (k.endswith(" volume") and k[:-7] + " count" not in keys)]
    elif _YES_NO.search(question):
        pool = [k for k in keys if k.endswith("?")]
    else:
        pool = [k for k in keys if not k.endswith("?")]
    on_slice = bool(_SLICE.search(question))
    pool = [k for k in pool if (" in this slice" in k) == on_slice] or pool
    if len(pool) == 1 and pool[0] in ("phase", "hemisphere"):
        return pool
    words = _stems(question)
    if specific and not any(w in words for k in pool for w in _stems(k) - _GENERIC):  # names no finding or structure of these
        return []
    scored = [(sum(w in words for w in _stems(k)) - 0.01 * sum(w not in words for w in _stems(k)), k) for k in pool]
    best = max((s for s, _ in scored), default=0.0)
    return [k for s, k in scored if s == best] if best > 0 else []


def _sentence(key: str, keys: list[str]) -> str:
    label = key.rstrip("?").strip()
    if key.endswith("?"):  # yes / no first, then the finding's count or volume when the result has one
        extra = label if label + " count" in keys else (label + " volume" if label + " volume" in keys else "")
        return f"{label[:1].upper() + label[1:]}: {value_reference(key)}" + (f"; {value_reference(extra)}." if extra else ".")
    if key.endswith((" side", " size")) or key in ("phase", "hemisphere"):
        return f"{value_reference(key)}."  # the choice itself first, as a closed question is answered
    return f"{label[:1].upper() + label[1:]}: {value_reference(key)}" + ("" if key == "impression" else ".")


def _fields(tool_texts: list[str]) -> list[str]:
    """The result fields an answer may name (``reference_keys``) less a finding's bare last word ("effusion" for
    "pleural effusion"), which names the finding without its verdict; "phase" and "hemisphere" stay."""
    named: set[str] = set()
    for measurements, findings in map(parse_tool_result, tool_texts):
        named |= set(measurements) | set(findings)
    bare = {k.split()[-1] for k in named} - named - {"phase", "hemisphere"}
    return [k for k in reference_keys(tool_texts) if k not in bare]


# ---- conversation ------------------------------------------------------------------------------------
def _earlier_results(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m["content"]) for m in messages if m["role"] == "tool" and not _is_error(str(m["content"]))]


def _last_expert(messages: list[dict[str, Any]]) -> str | None:
    return next((m.get("name") for m in reversed(messages) if m["role"] == "tool" and not _is_error(str(m["content"]))), None)


def _is_error(tool_text: str) -> bool:
    """A ``data.tool_text.format_tool_error`` message (an expert that could not run)."""
    try:
        body = json.loads(tool_text[tool_text.find("{"):])
    except json.JSONDecodeError:
        return True
    return not isinstance(body, dict) or "error" in body


def _normalise(text: str) -> str:
    text = " ".join(text.lower().split())
    for word, canonical in _SYNONYMS.items():
        text = re.sub(rf"\b{word}\b", canonical, text)
    return text


def _stems(text: str) -> set[str]:
    return {w.rstrip("s")[:5] for w in re.findall(r"[a-z0-9]+", _normalise(text)) if w not in _STOP}
