"""De-identification of free text a person typed (a chat question), where no DICOM header says what the identity is.

``scrub_identifiers`` masks what looks like an identifier: e-mail addresses, dates (numeric, DICOM ``YYYYMMDD`` and
written out: "3 March 1961", "March 3rd, 1961", "born in 1961"), phone numbers, digit runs of five or more and letter-digit
codes with four or more digits (record, accession and insurance numbers), the value after an identifier's label
("MRN: A12", "DOB 1/2/61", "accession no. 7781"), names after a title ("Mr Smith", "Dr. Jones") or after "named",
"called", "name is", and runs of capitalised words inside a sentence ("does Jane Doe have …", "Doe, Jane"). Words
of a known identity (``identity``: the study's patient, ``data.reidentify.ReidentificationKey.identity_words``) are
masked wherever they appear, in any case.

What it cannot know: a lower-case name with no title or label that is not the study's patient ("does jane have …").
Text that must not carry PHI at all is better not kept; this is for text that must be kept (training examples).
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["scrub_identifiers", "NAME", "DATE", "NUMBER", "EMAIL", "IDENTIFIER"]

NAME, DATE, NUMBER, EMAIL, IDENTIFIER = "[name]", "[date]", "[number]", "[email]", "[identifier]"

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|"
          r"nov(?:ember)?|dec(?:ember)?)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_LABEL = (r"\b(?:mrn|medical record (?:number|no\.?|#)|record (?:number|no\.?|#)|patient (?:id|number|no\.?|#)|"
          r"hospital (?:number|no\.?|#)|nhs (?:number|no\.?)|accession(?: (?:number|no\.?|#))?|acc\.? ?(?:no\.?|#)|ssn|"
          r"social security(?: number)?|insurance (?:number|no\.?|id)|id|dob|d\.o\.b\.?|date of birth|birth ?date|born(?: on)?)")
_TITLE_WORD = r"[A-Z][a-z]+(?:[-'’][A-Za-z]+)*"
# words that open a sentence and are no name ("Does Jane Doe …": "Does" stays)
_OPENERS = frozenset("""a an and any are as at but can could did do does for from had has have how i if in is it its
    may might must no not of on or please should show so tell that the then there these this those to was were what
    when where which who whom whose why will with would yes you your compare measure segment find give list run""".split())
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof"})

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# values that are identifiers wherever they stand (letter-digit codes and digit runs follow them)
_VALUES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"), DATE),
    (re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"), DATE),
    (re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+\d{{2,4}}\b", re.IGNORECASE), DATE),
    (re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+\d{{4}}\b", re.IGNORECASE), DATE),
    (re.compile(rf"\b{_MONTH}\s+\d{{4}}\b", re.IGNORECASE), DATE),
    (re.compile(r"\b(born\s+(?:in\s+)?)\d{4}\b", re.IGNORECASE), r"\1" + DATE),
    (re.compile(r"\+?\d[\d ()-]{8,}\d"), NUMBER),
)
_DIGITS = re.compile(r"\b\d{5,}\b")
# what follows an identifier's label, a title or a naming word; a "Surname, Forename" pair
_LABELLED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"({_LABEL}\s*(?:is|was|:|#|=|-)?\s*)(?=\S*\d)[A-Za-z0-9][\w/.\-]*", re.IGNORECASE), r"\1" + IDENTIFIER),
    (re.compile(rf"(\b(?:{'|'.join(sorted(_TITLES - {'dr', 'prof'}))})\b\.?\s+)[A-Za-z][\w'’-]*(?:\s+{_TITLE_WORD})?", re.IGNORECASE), r"\1" + NAME),
    (re.compile(rf"(\b(?:dr|prof)\b\.?\s+){_TITLE_WORD}(?:\s+{_TITLE_WORD})?", re.IGNORECASE), r"\1" + NAME),
    (re.compile(r"(\b(?:named|called|name is|name:|name =)\s+)[A-Za-z][\w'’-]*(?:\s+[A-Z][\w'’-]*)?", re.IGNORECASE), r"\1" + NAME),
    (re.compile(rf"\b{_TITLE_WORD},\s+{_TITLE_WORD}\b"), NAME),  # "Doe, Jane"
)
_CODE = re.compile(r"\b[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\b")
_SENTENCE_START = re.compile(r"(?:^|[.?!;:\n]\s*|[\"(]\s*)$")
_CAPITALISED = re.compile(rf"\b{_TITLE_WORD}(?:\s+{_TITLE_WORD})*")


def scrub_identifiers(text: str, identity: Iterable[str] = ()) -> str:
    """``text`` with identifier-like strings masked (``[name]``, ``[date]``, ``[number]``, ``[email]``,
    ``[identifier]``; module docstring), and every word of ``identity`` (names, IDs of a known patient) masked as
    ``[name]`` in any case."""
    text = _EMAIL.sub(EMAIL, text)
    for word in sorted({w for w in identity if len(w) >= 2}, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", NAME, text, flags=re.IGNORECASE)
    for pattern, repl in _VALUES:
        text = pattern.sub(repl, text)
    text = _CODE.sub(lambda m: IDENTIFIER if _is_code(m.group(0)) else m.group(0), text)
    text = _DIGITS.sub(NUMBER, text)
    for pattern, repl in _LABELLED:
        text = pattern.sub(repl, text)
    return _CAPITALISED.sub(lambda m: _capitalised_run(m, text), text)


def _is_code(token: str) -> bool:
    """A record / accession / insurance number: letters and at least four digits ("A1234567", "ACC-2024-0042")."""
    return any(c.isalpha() for c in token) and sum(c.isdigit() for c in token) >= 4


def _capitalised_run(match: re.Match[str], text: str) -> str:
    """A run of capitalised words with its names masked (one ``[name]`` for adjacent ones); kept: titles ("Mr"), and
    at a sentence's start a word that opens sentences ("Does") or a sentence's only capitalised word ("Liver?")."""
    words = match.group(0).split()
    at_start = bool(_SENTENCE_START.search(text[: match.start()]))
    out: list[str] = []
    for i, word in enumerate(words):
        first = i == 0 and at_start
        keep = word.lower() in _TITLES or (first and (word.lower() in _OPENERS or len(words) == 1))
        if keep:
            out.append(word)
        elif not out or out[-1] != NAME:
            out.append(NAME)
    return " ".join(out)
