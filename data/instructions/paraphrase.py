"""Many phrasings of one question: a tiny template grammar plus paraphrase rules.

Templates use ``{a|b|c}`` for alternatives (nested groups allowed) and ``<slot>`` for values, e.g.
``"{Is there|Do you see} {a|any} <finding> {in this image|here}?"``. ``phrase`` picks one alternative per
group from a seeded generator, fills the slots, then ``paraphrase`` applies rules a reader would accept
as the same question: synonyms, politeness wrappers, a leading context clause, word-order swaps of
"in this image" phrases. No typos — the model should learn the task, not noise.
"""

from __future__ import annotations

import re

import numpy as np

from data.phantoms.labels import FINDING_SYNONYMS

__all__ = ["phrase", "paraphrase", "expand", "fix_articles", "plural", "SYNONYMS"]

# Synonyms applied to whole words or phrases (case-insensitive on the first letter).
SYNONYMS: dict[str, tuple[str, ...]] = {
    **FINDING_SYNONYMS,
    "image": ("image", "picture", "scan"),
    "this image": ("this image", "this scan", "the image", "this study", "the picture"),
}

_POLITE_PREFIX = ("", "", "", "Please tell me: ", "Could you tell me: ", "Quick question: ", "I'd like to know: ",
                  "Can you check: ", "Looking at the image, ")
_POLITE_SUFFIX = ("", "", "", " Thanks.", " Thank you.", " Please answer briefly.")
_GROUP = re.compile(r"\{([^{}]*)\}")
_SLOT = re.compile(r"<(\w+)>")


def expand(template: str, rng: np.random.Generator) -> str:
    """Resolve ``{a|b}`` groups innermost-first by random choice."""
    text = template
    while True:
        m = _GROUP.search(text)
        if m is None:
            return re.sub(r"\s+([?.,!:])", r"\1", re.sub(r"\s+", " ", text)).strip()
        options = m.group(1).split("|")
        text = text[: m.start()] + options[int(rng.integers(len(options)))] + text[m.end():]


def phrase(template: str, rng: np.random.Generator, *, polite: bool = True, **slots: str) -> str:
    """One phrasing of ``template`` with ``<slot>`` values filled, synonyms and politeness applied."""
    text = expand(template, rng)
    for key, value in slots.items():
        text = text.replace(f"<{key}>s", plural(_synonym(str(value), rng)))
        text = text.replace(f"<{key}>", _synonym(str(value), rng))
    missing = _SLOT.findall(text)
    if missing:
        raise ValueError(f"template slots must all be filled, got no value for {missing} in {template!r}.")
    text = fix_articles(text)
    return paraphrase(text, rng) if polite else _capitalise(text)


def fix_articles(text: str) -> str:
    """'a an enlarged heart' → 'an enlarged heart', 'a MRI' → 'an MRI', 'an CT' → 'a CT'."""
    text = re.sub(r"\b(?:[Aa]n?|any) (an? |the )", r"\1", text)

    def article(m: re.Match) -> str:
        word = m.group(2)
        vowel = word[0].lower() in "aeiou" or word.split("-")[0] in ("MRI", "MR", "X", "X-ray", "FLAIR") or word.startswith("X-")
        vowel = vowel and not word.startswith(("one", "uni", "use", "CT"))
        art = "an" if vowel else "a"
        return (art.capitalize() if m.group(1)[0].isupper() else art) + " " + word

    return re.sub(r"\b([Aa]n?) ([\w-]+)", article, text)


def paraphrase(text: str, rng: np.random.Generator) -> str:
    """Rule-based variation of a finished question: synonyms for 'this image', moved location phrase,
    politeness wrappers."""
    for phrase_, alts in (("this image", SYNONYMS["this image"]),):
        if phrase_ in text:
            text = text.replace(phrase_, alts[int(rng.integers(len(alts)))], 1)
    # word order: "Is there X in this scan?" -> "In this scan, is there X?"
    m = re.match(r"^(.*?)( (?:in|on) (?:this|the) (?:image|scan|study|picture))\?$", text)
    if m and rng.random() < 0.3:
        text = f"{m.group(2).strip().capitalize()}, {m.group(1)[0].lower()}{m.group(1)[1:]}?"
    prefix = _POLITE_PREFIX[int(rng.integers(len(_POLITE_PREFIX)))]
    suffix = _POLITE_SUFFIX[int(rng.integers(len(_POLITE_SUFFIX)))]
    if prefix:
        keep_case = text.split(" ", 1)[0] in ("I", "I'd", "I'm", "I've")
        text = prefix + (text if keep_case else text[0].lower() + text[1:])
    return _capitalise(text + suffix)


def plural(noun_phrase: str) -> str:
    """'liver mass' → 'liver masses', 'nodule in the lung' → 'nodules in the lung', 'an enlarged heart' →
    'enlarged hearts'."""
    head, sep, tail = noun_phrase.partition(" in the ")
    words = head.split(" ")
    if words[0] in ("a", "an"):
        words = words[1:]
    last = words[-1]
    words[-1] = last + ("es" if last.endswith(("s", "x", "sh", "ch")) else "s")
    return " ".join(words) + (sep + tail if sep else "")


def _synonym(value: str, rng: np.random.Generator) -> str:
    alts = SYNONYMS.get(value)
    return alts[int(rng.integers(len(alts)))] if alts else value


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text
