"""Keeping an expert call on the study and on what the question names.

A call to an expert that does not exist or cannot read this study (``ct_segmentation`` on a brain MRI) goes to
the one expert whose inputs the study holds (``Expert.select_inputs``), with its default arguments, when exactly
one does; otherwise it stays an error the model sees. A small model also sometimes calls the right expert with the
wrong choice ("What is the liver volume?" →
``ct_segmentation`` with ``targets: "lesions"``): the result then holds nothing the answer needs. When the
question names choices of an argument through the expert's own vocabulary (``Expert.vocabulary``) and the
call's value covers none of them (``Expert.covers``, so "organs" covers "liver"), the argument is set to the
named choices. A call whose value already covers what the question names is left as the model wrote it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from experts.base import Expert, ExpertError

__all__ = ["named_choices", "repair_arguments", "study_experts", "repair_expert"]


def study_experts(experts: Mapping[str, Expert], volumes: Mapping[str, Any]) -> list[str]:
    """The names of the experts whose inputs the study's ``volumes`` hold (``Expert.select_inputs`` succeeds)."""
    names = []
    for name, expert in experts.items():
        try:
            expert.select_inputs(volumes)
        except ExpertError:
            continue
        names.append(name)
    return names


def repair_expert(name: str, experts: Mapping[str, Expert], volumes: Mapping[str, Any]) -> tuple[str, str]:
    """(the expert to run, a note) for a call to ``name``: ``name`` itself when it exists and reads this study;
    else the one expert that does (note says so); else ``name`` unchanged (the call then fails with a clear error)."""
    readers = study_experts(experts, volumes)
    if name in readers or len(readers) != 1:
        return name, ""
    why = "does not exist" if name not in experts else "cannot read this study"
    return readers[0], f"expert {name!r} {why}; ran {readers[0]!r}, the one expert for this study"


def named_choices(question: str, words: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The choices ``question`` names (in ``words`` order), longest phrase first, each stretch of the question
    read once ("kidney cyst" is not also "kidney"); plurals count ("kidneys")."""
    text = " " + re.sub(r"[^a-z0-9]+", " ", question.lower()) + " "
    phrases = sorted({p.lower() for ps in words.values() for p in ps}, key=len, reverse=True)
    found: set[str] = set()
    for phrase in phrases:
        pattern = re.compile(rf" {re.escape(phrase)}(?:s|es)? ")
        if pattern.search(text):
            found.add(phrase)
            text = pattern.sub(" | ", text)
    return [choice for choice, ps in words.items() if any(p.lower() in found for p in ps)]


def repair_arguments(expert: Expert, arguments: Mapping[str, Any], question: str,
                     named_by: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(arguments kept on what ``question`` names, notes saying what was changed). Only arguments with a
    vocabulary are touched; a value covering at least one named choice is kept. named_by: argument → the choices
    the parsed question names (``vlm.grounding``), used instead of reading ``question`` with the vocabulary."""
    out = dict(arguments)
    notes: list[str] = []
    schema = dict(expert.parameters or {})
    known = dict(schema.get("properties") or {})
    if schema.get("additionalProperties") is False:  # an argument the expert does not take is dropped, not an error
        for argument in [a for a in out if a not in known]:
            notes.append(f"{argument} {out.pop(argument)!r} dropped ({expert.name} takes no such argument)")
    for argument, words in expert.vocabulary.items():
        if named_by is not None:
            value = named_by.get(argument)
            named = [] if value is None else ([value] if isinstance(value, str) else list(value))
        else:
            named = named_choices(question, words)
        if not named or argument not in out:  # a missing argument takes the expert's default, which covers all
            continue
        value = out[argument]
        if any(expert.covers(argument, value, choice) for choice in named):
            continue
        out[argument] = named[0] if len(named) == 1 else named
        notes.append(f"{argument} {value!r} → {out[argument]!r} (named in the question)")
    return out, notes
