"""How typed questions differ from written ones: case, punctuation, British spelling, typos, lead-ins and fillers.

``add_noise`` applies each with its probability in ``NoiseConfig`` and says which it applied, so a generated question
carries its style ("fragment+lower+typo"). A typo swaps two neighbouring letters or drops one inside a word of five
letters or more, never its first letter: the lexicon (``data.lexicon.find_terms``) still reads such a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data.instructions.question_frames import ClinicianQuestionError

__all__ = ["NoiseConfig", "add_noise", "typo", "LEAD_INS", "SIGN_OFFS", "FILLERS"]


@dataclass(frozen=True)
class NoiseConfig:
    """Probabilities (0–1) of each variation of a question."""

    british: float = 0.2  # tumour, oedema, lateralise
    lead_in: float = 0.18  # "Quick question: ", "Hi, "
    filler: float = 0.1  # "so ", "um, ", "ok so "
    sign_off: float = 0.1  # " thanks", " pls"
    lower: float = 0.3  # all lower case
    lower_first: float = 0.1  # only the first letter lowered
    upper: float = 0.015  # ALL CAPS
    drop_end_mark: float = 0.25  # no final "?" or "."
    double_mark: float = 0.05  # "??"
    typo: float = 0.15  # one letter swapped or dropped
    second_typo: float = 0.15  # of the questions with a typo, those with another

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ClinicianQuestionError(f"NoiseConfig.{name} must be a probability in [0, 1], got {value}.")


LEAD_INS = ("Quick question: ", "Hi, ", "Hey, ", "Sorry to bother you, ", "Just checking: ", "One thing: ", "Question: ",
            "Could you tell me: ", "Can you help? ", "Please tell me: ", "Doc here, ", "Hello, ", "Can you check: ",
            "I'd like to know: ", "Need to know: ", "For the MDT: ", "For the handover: ", "Before I call the team: ",
            "On call here, ", "Please: ")
FILLERS = ("so ", "um, ", "uh ", "ok so ", "well, ", "right, ", "hmm, ", "also ", "and ", "just wondering, ", "basically ")
SIGN_OFFS = (" thanks", " thx", " pls", " please", " thank you", " ty", " asap", " when you can", " cheers", " thanks!")
_BRITISH = (("tumor", "tumour"), ("edema", "oedema"), ("center", "centre"), ("lateralize", "lateralise"), ("summarize", "summarise"),
            ("hemorrhag", "haemorrhag"), ("esophag", "oesophag"), ("color", "colour"))
_WORD = re.compile(r"[A-Za-z]{5,}")


def add_noise(text: str, rng: np.random.Generator, config: NoiseConfig = NoiseConfig()) -> tuple[str, list[str]]:
    """``text`` with variations drawn from ``config``; returns it and the names of the variations applied."""
    applied: list[str] = []
    if rng.random() < config.british:
        changed = text
        for us, uk in _BRITISH:
            changed = changed.replace(us, uk)
        if changed != text:
            text = changed
            applied.append("british")
    if rng.random() < config.lead_in:
        text = LEAD_INS[int(rng.integers(len(LEAD_INS)))] + _lower_first(text)
        applied.append("lead-in")
    elif rng.random() < config.filler:
        text = FILLERS[int(rng.integers(len(FILLERS)))] + _lower_first(text)
        applied.append("filler")
    if rng.random() < config.sign_off:
        text = _strip_end(text) + SIGN_OFFS[int(rng.integers(len(SIGN_OFFS)))]
        applied.append("sign-off")
    r = rng.random()
    if r < config.upper:
        text, applied = text.upper(), applied + ["caps"]
    elif r < config.upper + config.lower:
        text, applied = text.lower(), applied + ["lower"]
    elif r < config.upper + config.lower + config.lower_first:
        text, applied = _lower_first(text), applied + ["lower-first"]
    r = rng.random()
    if r < config.drop_end_mark and text[-1:] in "?.":
        text, applied = text[:-1].rstrip(), applied + ["no-mark"]
    elif r < config.drop_end_mark + config.double_mark and text.endswith("?"):
        text, applied = text + "?", applied + ["double-mark"]
    if rng.random() < config.typo:
        text = typo(text, rng)
        applied.append("typo")
        if rng.random() < config.second_typo:
            text = typo(text, rng)
    return text, applied


def typo(text: str, rng: np.random.Generator) -> str:
    """One typo in one word of five letters or more: two inner neighbours swapped, or an inner letter dropped.
    The text unchanged when it has no such word."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    m = words[int(rng.integers(len(words)))]
    w = m.group(0)
    for _ in range(4):
        i = int(rng.integers(1, len(w) - 1))
        new = w[:i] + w[i + 1] + w[i] + w[i + 2:] if rng.random() < 0.5 else w[:i] + w[i + 1:]
        if new.lower() != w.lower():
            return text[: m.start()] + new + text[m.end():]
    return text


def _lower_first(text: str) -> str:
    """The first letter lowered unless the first word is an abbreviation or a name ("CT", "I", "PTX", "Bosniak")."""
    first = text.split(" ", 1)[0]
    if first.isupper() and len(first) > 1 or first in ("I", "I'd", "I'm") or first.startswith("Bosniak"):
        return text
    return text[:1].lower() + text[1:]


def _strip_end(text: str) -> str:
    return text.removesuffix(".")

