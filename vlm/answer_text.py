"""An answer's words: result fields said as a clinician reads them, and the model's clauses that stand.

* ``field_sentence``: one result field (``data.result_fields`` key and value) as a sentence — "The left kidney is
  larger (left 150.2 mL, right 120.9 mL).", "Left: the kidney cyst is on the left.", "3 lung nodules found,
  …", "No, not normal: cardiomegaly present, probability 0.87." With ``lead`` the value comes first, as the answer to
  a closed question does; without, as a labelled citation ("Side of the kidney cyst: left.").
* ``comparison_sentence``: two cited volumes compared ("The liver is larger than the spleen (… vs …)").
* ``standing_clauses``: the clauses of a model's answer that can be shown as written: a clause with an unbalanced
  bracket, an unfilled reference, a number no result or the question holds, or a
  structure that neither the question nor any result names (a liver on a chest film) is dropped.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from data.lexicon import find_terms
from data.tool_text import UNRESOLVED
from vlm.safety import ungrounded_numbers

__all__ = ["field_sentence", "field_label", "comparison_sentence", "standing_clauses", "states"]


def states(answer: str, value: str, key: str = "") -> bool:
    """Whether ``answer`` already gives ``value`` (its numbers, or its words when it has none) — about the structure
    of ``key`` when one is given ("pneumothorax … 0.00" does not state a pleural effusion's 0.00)."""
    numbers = re.findall(r"\d+(?:\.\d+)?", value)
    said = all(n in answer for n in numbers) if numbers else value.lower().strip().rstrip(".") in answer.lower()
    subject = _subject(key)
    if not said or not subject:
        return said
    named = {m.key for m in find_terms(answer)}
    return subject in named or all(w in answer.lower() for w in re.findall(r"[a-z]{4,}", subject))


def _subject(key: str) -> str:
    """The structure a field key is about ("kidney cyst in this slice side" → "kidney cyst"); "" for study-wide keys."""
    key = key.rstrip("?").replace(" in this slice", "")
    for suffix in (" normal", " side", " size", " volume"):
        key = key[: -len(suffix)] if key.endswith(suffix) else key
    key = re.sub(r"^(?:larger|smaller) ", "", key)
    return "" if key in ("normal", "phase", "contrast", "impression", "positive findings", "negative findings") else key


def field_label(key: str) -> str:
    """A field key in words: "kidney cyst side" → "side of the kidney cyst", "cardiomegaly normal?" → "normal
    (cardiomegaly absent)"."""
    if key.endswith(" normal?"):
        return f"normal ({key[:-len(' normal?')]} absent)"
    if key == "normal?":
        return "normal study"
    for suffix in (" side", " size"):
        if key.endswith(suffix):
            return f"{suffix.strip()} of the {key[: -len(suffix)]}"
    return key.rstrip("?")


def field_sentence(key: str, value: str, lead: bool = False, wh: bool = False, *, negated: bool = False,
                   asks_abnormal: bool = False, counts: bool = False) -> str:
    """One result field as a sentence (see the module docstring); ``wh``: the question asks "what …?", not "is …?"
    ("What abnormalities?" is answered "None: …", not "Yes, normal: …"; ``counts``: "How many?", the number first);
    ``asks_abnormal``: a yes means abnormal
    ("Anything abnormal?" → "Yes, abnormal: …"); ``negated``: the question is put negatively ("No pneumothorax?"),
    where a bare yes / no is ambiguous: the finding's state leads instead."""
    value = value.strip().rstrip(".")
    yes = value.startswith("yes")
    detail = value[value.find("(") + 1:value.rfind(")")] if "(" in value else ""
    if wh and (key == "normal?" or key.endswith(" normal?")):
        if counts and not yes and detail:  # "How many abnormalities?": the number first
            n = len(re.split(r",\s*(?![^()]*\))", detail))
            return f"{n} abnormal finding{'' if n == 1 else 's'}: {detail}."
        return ("None (0 findings)" if yes else "Abnormal") + (f": {detail}" if detail else "") + "."
    if key == "normal?" or key.endswith(" normal?"):
        if asks_abnormal:
            return ("No, normal" if yes else "Yes, abnormal") + (f": {detail}" if detail else "") + "."
        return ("Yes, normal" if yes else "No, not normal") + (f": {detail}" if detail else "") + "."
    if not lead:
        label = field_label(key)
        return f"{label[:1].upper()}{label[1:]}: {value}."
    if key.endswith("?") and value.startswith(("yes", "no")) and negated:  # "No pneumothorax?": the state, not yes / no
        return _upper(field_label(key)) + (" present" if yes else " absent") + (f" ({detail})" if detail else "") + "."
    if key.endswith("?") and value.startswith(("yes", "no")):  # a closed question: yes / no first
        return ("Yes" if yes else "No") + f" ({field_label(key)}" + (f": {detail}" if detail else "") + ")."
    if re.fullmatch(r"(?:larger|smaller) (?:kidney|lung)", key):
        m = re.match(r"the (left|right) (\w+)(.*)$", value)
        if m:
            return f"The {m.group(1)} {m.group(2)} is {key.split()[0]}{m.group(3)}."
    if key.endswith(" side"):
        return _side_sentence(key[: -len(" side")], value)
    counted = re.match(r"(\d+) found(.*)$", value)
    label = field_label(key)
    if counted:  # "3 found, volume …" → "3 kidney cysts found, volume …": the number first, then what was counted
        n = int(counted.group(1))
        return f"{n} {label}{'' if n == 1 else 's'} found{counted.group(2)}."
    if value == "none found":
        return f"No {label} found."
    if key in ("impression", "positive findings", "negative findings"):
        return f"{_upper(key)}: {value}."
    return f"{_upper(value)} — {'contrast phase' if key == 'phase' else label}."  # the value first, as a closed question's answer leads


def _side_sentence(what: str, value: str) -> str:
    """"kidney cyst", "left" → "Left: the kidney cyst is on the left.": the side first, then in full (a bare leading
    "Right" reads as "correct")."""
    where = ""
    if " in this slice" in what:
        what, where = what.replace(" in this slice", ""), "In this slice, "
    if value == "none found":
        return _upper(f"{where}no {what} found.")
    sides = value.split(" (")[0]
    extra = value[len(sides):]
    what_here = f"{what}{' in this slice' if where else ''}"
    if sides in ("left and right", "right and left"):
        return f"Left and right: {what}s{' in this slice' if where else ''} on both sides."
    hemisphere = extra.strip()[1:-1] if extra.strip().startswith("(") and "hemisphere" in extra else ""
    if hemisphere:  # "Left: the tumor is in the left hemisphere."
        return f"{_upper(sides)}: the {what_here} is in the {hemisphere}."
    return f"{_upper(sides)}: the {what_here} is on the {sides}{extra}."  # the side first, then said in full


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def comparison_sentence(values: dict[str, str]) -> str:
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


_CLAUSE_END = re.compile(r"(?<=[.;!?])\s+|\n+")


def standing_clauses(answer: str, known: Sequence[str], question: str = "", names: Iterable[str] = (),
                     drop_ungrounded: bool = True) -> tuple[str, list[str]]:
    """(the clauses of ``answer`` that stand, joined; the dropped ones). ``known``: the conversation's result texts
    (numbers and structures an answer may state); ``names``: the results' field keys — a clause that is only a field's
    name ("aorta volume;") says nothing and is dropped, as is a clause said twice. ``drop_ungrounded``: also drop a
    clause stating a number no result holds (when the result's fields answer the question; otherwise such a clause is
    the model's own reading, kept and flagged by the agent)."""
    known_text = " ".join(known).lower() + " " + question.lower()
    bare = {_plain(n) for n in names}
    kept: list[str] = []
    dropped: list[str] = []
    for clause in (c.strip() for c in _CLAUSE_END.split(answer.strip())):
        if not clause:
            continue
        plain = _plain(clause)
        if plain in bare or any(_plain(k) == plain for k in kept) or _malformed(clause) or (drop_ungrounded and ungrounded_numbers(clause, known, question)) \
                or _foreign_structure(clause, known_text):
            dropped.append(clause)
        else:
            kept.append(clause)
    return " ".join(kept), dropped


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9?]+", " ", text.lower()).split())


def _malformed(clause: str) -> bool:
    if UNRESOLVED in clause or "[[" in clause or "]]" in clause:
        return True
    if clause.count("(") != clause.count(")") or clause.count("[") != clause.count("]"):
        return True
    return len(re.findall(r"[A-Za-z]{2,}", clause)) < 1


def _foreign_structure(clause: str, known_text: str) -> bool:
    """Whether the clause names a structure or finding that no result and not the question names."""
    for match in find_terms(clause):
        names = {match.key, match.name}
        if not any(n.lower() in known_text for n in names) and not _any_word_known(match.key, known_text):
            return True
    return False


def _any_word_known(key: str, known_text: str) -> bool:
    words = [w for w in re.findall(r"[a-z]+", key.lower()) if len(w) > 3]
    return bool(words) and all(w in known_text for w in words)
