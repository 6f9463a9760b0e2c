"""The clinician-style question generator never writes a held-out evaluation phrasing verbatim, nor one of four words or
more inside a longer question.

This module is the one place besides the evaluation that reads the frozen held-out set: it checks that the
generator's decontamination list (hashes only) is that set's, and that a large sample of generated questions holds
none of its phrasings. A failure names the count and the generating intent families, not the phrasings.

``python tests/data/test_clinician_question_leakage.py --write`` rewrites the decontamination list from the set.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SET_PATH = ROOT / "tests" / "data" / "heldout_phrasings.jsonl"
N_QUESTIONS = 20_000


def _phrasings() -> list[str]:
    return [json.loads(line)["phrasing"] for line in SET_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _list_text() -> str:
    from data.instructions.clinician_questions import question_hash

    hashes = sorted({question_hash(p) for p in _phrasings()})
    return ("# SHA-256 of each held-out evaluation phrasing, normalised (data.instructions.clinician_questions.normalised_question).\n"
            "# The question generator draws again when a question hashes to one of these. Written by\n"
            "# tests/data/test_clinician_question_leakage.py --write from the frozen set; never edit by hand.\n" + "\n".join(hashes) + "\n")


def _leaks(questions) -> Counter:
    """Intent family → how many of ``questions`` are a held-out phrasing (or hold one as a sentence), or contain one of
    ``SPAN_WORDS`` words or more as a run of their words."""
    from data.instructions.clinician_questions import SPAN_WORDS, normalised_question

    held = {normalised_question(p) for p in _phrasings()}
    longest = max(len(h.split()) for h in held)
    found: Counter = Counter()
    for q in questions:
        pieces = [q.text, *q.text.splitlines(), *re.split(r"(?<=[.?!])\s+|\n", q.text)]
        words = normalised_question(q.text).split()
        spans = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + SPAN_WORDS, min(len(words), i + longest) + 1)}
        if any(normalised_question(p) in held for p in pieces) or spans & held:
            found[q.family] += 1
    return found


def test_decontamination_list_is_the_frozen_sets():
    from data.instructions.clinician_questions import EXCLUDED_QUESTIONS

    assert EXCLUDED_QUESTIONS.read_text() == _list_text(), (
        f"{EXCLUDED_QUESTIONS.name} is not the hash list of {SET_PATH.name}; rewrite it with "
        "`python tests/data/test_clinician_question_leakage.py --write`.")


def test_no_held_out_phrasing_appears_among_generated_clinician_questions():
    from data.instructions.clinician_questions import ClinicianMix, sample_questions

    questions = sample_questions(N_QUESTIONS, seed=3)
    assert len({q.text for q in questions}) > N_QUESTIONS // 2
    leaks = _leaks(questions)
    assert not leaks, f"{sum(leaks.values())} of {N_QUESTIONS} generated questions are held-out phrasings, from the families {dict(leaks)}"
    # the check has teeth: without the decontamination list, common wordings do come out verbatim
    assert _leaks(sample_questions(N_QUESTIONS // 4, seed=3, mix=ClinicianMix(decontaminate=False)))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/data/test_clinician_question_leakage.py --write")
    sys.path.insert(0, str(ROOT))
    from data.instructions.clinician_questions import EXCLUDED_QUESTIONS

    EXCLUDED_QUESTIONS.write_text(_list_text())
    print(f"wrote {EXCLUDED_QUESTIONS}")
