"""The result fields that answer a parsed question: which ``[[key]]`` of an expert result (``data.result_fields``)
answers each family of question about each kind of term — a presence by ``X?``, a lesion's size by ``X size``, a
side by ``X side``, an organ's normality by its lesions' ``X normal?`` first, a paired organ compared by ``larger
kidney``, a report by ``impression`` — with a field of the slice on screen followed by its whole-study twin."""

from __future__ import annotations

import re
from typing import Any

from data.lexicon import TERMS, Term, normalise_text
from data.slice_facts import IN_SLICE

__all__ = ["part_keys", "PHASES"]

PHASES = {"non-contrast": r"non[- ]?contrast|unenhanced|un-enhanced|plain|pre[- ]?contrast|native|without contrast",
           "arterial": r"arterial|late arterial|early arterial",
           "portal venous": r"portal(?:[- ]?venous)?|porto[- ]?venous|\bpv\b|venous",
           "delayed": r"delayed|equilibrium|excretory|late phase"}


_MRI_VOLUME = {"tumor": "whole tumor", "tumor core": "tumor core", "enhancing tumor": "enhancing tumor",
               "necrotic core": "necrotic core", "edema": "edema"}
_MRI_FINDING = {"tumor": "tumor", "enhancing tumor": "enhancing tumor", "necrotic core": "necrosis", "edema": "edema",
                "tumor core": "tumor"}


def part_keys(part: Any) -> list[str]:
    """The result fields (``[[key]]`` references) that answer one part of a parsed question (a ``QuestionIntent``
    without parts), in the order an answer gives them."""
    terms = list(part.terms)
    slice_ = part.scope == "slice"
    fam = part.family
    keys: list[str] = []
    for t in terms:
        term = TERMS.get(t) or next((d for d in part.declared if d.key == t), Term(t, "organ"))  # an expert's own term
        if fam == "comparison" and any(k.endswith((" kidney", " lung")) for k in keys) and t.endswith((" kidney", " lung")):
            continue  # "left kidney vs right kidney": one comparison
        if term.kind == "phase":
            continue
        finding = _MRI_FINDING.get(t, t) if term.modality == "MR" else t
        if fam in ("presence", "likelihood"):
            if slice_ and term.modality != "CR":
                keys.append(f"{'tumor' if term.modality == 'MR' else t}{IN_SLICE}?")
            elif term.kind == "organ":
                keys.append(f"{t} volume")
            else:
                keys.append(f"{finding}?" if fam == "presence" else finding)
        elif fam == "normality":
            keys.append(f"{finding} normal?" if term.kind != "organ" else f"{t} volume")
        elif fam == "count" and term.kind != "organ" and not slice_:  # a whole-study count does not answer "on this slice"
            keys.append(t)
        elif fam == "size":
            if term.kind == "organ":
                keys.append(f"{t} volume")
            elif term.modality == "MR" and t in ("edema", "necrotic core", "enhancing tumor", "tumor core"):
                keys.append(f"{_MRI_VOLUME[t]} volume")  # a subregion has no one diameter: how big it is is its volume
            elif term.modality == "MR":  # a brain tumour's size: on the slice, or the whole tumour's
                keys.append(f"tumor{IN_SLICE} size" if slice_ else "whole tumor size")
            else:
                keys.append(f"{t}{IN_SLICE} size" if slice_ else f"{t} size")
        elif fam == "side" and term.kind != "organ":
            if term.modality == "MR":
                keys.append("tumor side")
            else:
                keys.append(f"{t}{IN_SLICE} side" if slice_ else f"{t} side")
        elif fam == "volume":
            keys.append(f"{_MRI_VOLUME[t]} volume" if term.modality == "MR" and t in _MRI_VOLUME else f"{t} volume")
        elif fam == "comparison":
            pair = "kidney" if "kidney" in t else ("lung" if "lung" in t else "")
            text = normalise_text(part.text)
            paired = term.kind == "organ" and pair and (t in ("kidneys", "lungs") or sum(x.endswith(" " + pair) for x in terms) == 2
                                                        or (bool(re.search(r"\b(?:left|lt|l)\b", text)) and bool(re.search(r"\b(?:right|rt|r)\b", text))))
            if paired:
                smaller = bool(re.search(r"\bsmaller\b|\bless\b", normalise_text(part.text)))
                keys.append(f"{'smaller' if smaller else 'larger'} {pair}")
            elif term.kind != "phase":  # any two structures: their volumes, compared when cited ("liver vs spleen")
                keys.append(f"{_MRI_VOLUME[t]} volume" if term.modality == "MR" and t in _MRI_VOLUME else f"{t} volume")
    if fam == "phase" or "contrast phase" in terms:
        named_phase = any(re.search(rf"\b(?:{p})", normalise_text(part.text)) for p in PHASES.values())
        # "Was contrast given?" is answered yes / no by the contrast finding, then the phase; "Which phase?" by the phase
        keys += ["contrast?", "phase"] if part.form == "yes_no" and not named_phase else ["phase"]
    if fam == "normality" and not keys:
        keys.append("normal?")
    if fam == "normality":  # the verdict first, then what it rests on (the organ's volume)
        keys.sort(key=lambda k: not k.endswith("normal?"))
    if fam == "comparison" and not keys:
        pair = "kidney" if "kidney" in part.text.lower() or "renal" in part.text.lower() else "lung"
        keys.append(f"larger {pair}")
    if fam in ("report",):
        keys.append("impression")
    # each field of the slice on screen is followed by its whole-study twin, cited when the slice's does not resolve
    twins = {f"tumor{IN_SLICE} size": "whole tumor size"}  # a brain tumour's whole-study size is the whole tumour's
    return list(dict.fromkeys(k for key in keys for k in ((key, twins.get(key, key.replace(IN_SLICE, ""))) if IN_SLICE in key else (key,))))
