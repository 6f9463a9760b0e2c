"""Safety rails of the agent: grounded numbers and the modality check.

* Every number an answer states must be found in the tool results of the conversation (or in the
  question); other numbers are reported so the turn is flagged and the user warned.
* A question that needs an expert for another modality than the study has (a liver volume asked of a
  radiograph) is answered plainly, before any model guesses.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

__all__ = ["ungrounded_numbers", "needed_experts", "modality_mismatch", "QUESTION_TOPICS", "MODALITY_NAMES"]

# Topics that only an expert of one kind can measure (lower-case substrings of the question).
QUESTION_TOPICS: dict[str, tuple[str, ...]] = {
    "ct_segmentation": ("liver", "hepatic", "spleen", "kidney", "renal", "pancrea", "aorta", "lung nodule", "organ volume", "kidney cyst"),
    "mri_brain_tumor": ("brain tumo", "glioma", "glioblastoma", "edema", "oedema", "enhancing tumo", "necrotic core"),
    "cxr_classification": ("cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "chest x-ray", "chest radiograph"),
}
MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "DX": "radiograph", "CR": "radiograph", "OT": "image"}
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


def needed_experts(question: str) -> list[str]:
    """Experts whose topic the question names (by keyword), in ``QUESTION_TOPICS`` order."""
    q = question.lower()
    return [name for name, words in QUESTION_TOPICS.items() if any(w in q for w in words)]


def modality_mismatch(question: str, study_modalities: Sequence[str], expert_modalities: Mapping[str, Sequence[str]]) -> str | None:
    """A plain reply when the question needs an expert none of the study's modalities can feed, else None.

    expert_modalities: expert name → modalities it accepts (``Expert.modalities``).
    """
    needed = [n for n in needed_experts(question) if n in expert_modalities]
    if not needed or not study_modalities:
        return None
    have = set(study_modalities)
    if any(have & set(expert_modalities[n]) for n in needed):
        return None
    name = needed[0]
    wanted = "/".join(dict.fromkeys(MODALITY_NAMES.get(m, m) for m in expert_modalities[name]))
    found = ", ".join(dict.fromkeys(MODALITY_NAMES.get(m, m) for m in study_modalities))
    return (
        f"I cannot answer that from this study: it needs the {name} expert, which works on {wanted} images, "
        f"and this study holds {found} only. I will not estimate it from the picture. "
        f"Load a {wanted} study to get this measurement."
    )
