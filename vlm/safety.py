"""Safety rails of the agent: grounded numbers and the modality check.

* Every number an answer states must be found in the tool results of the conversation (or in the
  question); other numbers are reported so the turn is flagged and the user warned.
* A question that names only what experts of another modality report (a liver volume asked of a radiograph:
  the parsed question's terms, the experts' declared modalities and vocabularies) is answered plainly, before any
  model guesses.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from data.lexicon import TERMS
from vlm.intent import QuestionIntent, lexicon_modality

__all__ = ["ungrounded_numbers", "needed_experts", "modality_mismatch", "MODALITY_NAMES"]

MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "DX": "radiograph", "CR": "radiograph", "OT": "image", "US": "ultrasound"}
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(?![\w])")


def ungrounded_numbers(answer: str, sources: Iterable[str], question: str = "") -> list[str]:
    """Numbers in ``answer`` not found in ``sources`` (tool results) nor in the ``question``.

    A number counts as found when a source number rounds to it at the answer's precision (1523 for
    1523.4), or is it as a percentage of a probability (87 % for 0.87).
    """
    known: list[float] = []
    for text in list(sources) + [question]:
        known.extend(float(n.replace(",", ".")) for n in _NUMBER.findall(text))
    missing = []
    for token in _NUMBER.findall(answer):
        value = float(token.replace(",", "."))
        decimals = len(token.split(".")[1]) if "." in token else 0
        tol = 0.5 * 10 ** (-decimals) + 1e-9
        if not any(abs(k - value) <= tol or abs(100 * k - value) <= tol for k in known):
            missing.append(token)
    return missing


def needed_experts(intent: QuestionIntent, experts: Mapping[str, Any]) -> list[str]:
    """The experts that report what the question names but the study's experts do not (``intent.elsewhere``), in
    ``experts`` order: those declaring the term in their ``vocabulary``, or reading the modality the lexicon files it
    under. ``experts``: name → ``Expert`` (or its modalities)."""
    needed: list[str] = []
    for key in intent.elsewhere:
        term = TERMS.get(key) or next((t for t in intent.declared if t.key == key), None)
        if term is None:
            continue
        tag = term.modality
        for name, expert in experts.items():
            declared = key in {" ".join(c.lower().split()) for by_choice in _vocabulary(expert).values() for c in by_choice}
            if name not in needed and (declared or (tag and tag in {lexicon_modality(m) for m in _modalities(expert)})):
                needed.append(name)
    return needed


def modality_mismatch(intent: QuestionIntent, study_modalities: Sequence[str], experts: Mapping[str, Any]) -> str | None:
    """A plain reply when the question names only what experts of other modalities report (a liver volume asked of a
    radiograph), else None. ``experts``: name → ``Expert`` (its declared ``modalities`` and ``vocabulary``), or name →
    modalities."""
    if intent.terms or not study_modalities:
        return None
    needed = needed_experts(intent, experts)
    if not needed:
        return None
    have = set(study_modalities)
    if any(have & set(_modalities(experts[n])) for n in needed):
        return None
    name = needed[0]
    wanted = "/".join(dict.fromkeys(MODALITY_NAMES.get(m, m) for m in _modalities(experts[name])))
    found = ", ".join(dict.fromkeys(MODALITY_NAMES.get(m, m) for m in study_modalities))
    return (
        f"I cannot answer that from this study: it needs the {name} expert, which works on {wanted} images, "
        f"and this study holds {found} only. I will not estimate it from the picture. "
        f"Load a {wanted} study to get this measurement."
    )


def _modalities(expert: Any) -> tuple[str, ...]:
    return tuple(getattr(expert, "modalities", expert) or ())


def _vocabulary(expert: Any) -> Mapping[str, Mapping[str, Sequence[str]]]:
    return getattr(expert, "vocabulary", None) or {}
