"""Scorers for `m3 eval`: VQA (closed exact match, open recall), reports (BLEU-4, ROUGE-L, finding F1),
expert calls (precision / recall) and grounding (numbers quoted in answers found in tool results).

The VQA protocol is LLaVA-Med's / VILA-M3's: closed questions score exact match of the normalised answer
(for yes/no, the first yes/no word), open questions score the fraction of reference words recalled.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = [
    "normalize_answer",
    "closed_match",
    "open_recall",
    "bleu4",
    "rouge_l",
    "extract_findings",
    "finding_f1",
    "CallScore",
    "tool_call_scores",
    "numbers_in",
    "is_grounded",
]

_ARTICLES = {"a", "an", "the"}
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?")
_NEGATION = re.compile(r"\b(no|without|absent|negative for|not seen|none|free of|unremarkable)\b")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().strip()
    text = "".join(" " if ch in string.punctuation and ch != "." else ch for ch in text)
    text = re.sub(r"\.(?=\s|$)", " ", text)  # a full stop ending a sentence, before a space or a line break
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def closed_match(prediction: str, reference: str) -> bool:
    """Exact match for closed questions; yes/no questions compare the first yes/no word of the prediction."""
    ref = normalize_answer(reference)
    pred = normalize_answer(prediction)
    if ref in ("yes", "no"):
        first = next((w for w in pred.split() if w in ("yes", "no")), None)
        return first == ref
    return pred == ref or pred.startswith(ref + " ")


def open_recall(prediction: str, reference: str) -> float:
    """Fraction of the reference's words that appear in the prediction (LLaVA-Med's open-question recall)."""
    ref_words = normalize_answer(reference).split()
    if not ref_words:
        return 1.0
    pred_words = set(normalize_answer(prediction).split())
    return sum(w in pred_words for w in ref_words) / len(ref_words)


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 100] (sacrebleu, 13a tokenisation)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in [0, 100] (rouge-score, stemming on)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]
    return 100.0 * sum(scores) / max(len(scores), 1)


def extract_findings(report: str, vocabulary: Mapping[str, Sequence[str]]) -> set[str]:
    """Findings a report asserts as present.

    vocabulary: finding → phrases that name it. A phrase counts when it occurs in a sentence whose text
    before the phrase has no negation ("no pleural effusion", "without nodule" do not count).
    """
    present: set[str] = set()
    for sentence in re.split(r"(?<=[.;])\s+|;|\n", report.lower()):  # "0.12" is not a sentence end
        for finding, phrases in vocabulary.items():
            for phrase in phrases:
                at = sentence.find(phrase.lower())
                if at >= 0 and not _NEGATION.search(sentence[:at]):
                    present.add(finding)
                    break
    return present


def finding_f1(predicted: Iterable[set[str]], truth: Iterable[set[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 of finding sets, one pair per report."""
    tp = fp = fn = 0
    for p, t in zip(predicted, truth):
        tp += len(p & t)
        fp += len(p - t)
        fn += len(t - p)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass
class CallScore:
    precision: float
    recall: float
    name_precision: float
    name_recall: float


def tool_call_scores(
    predicted: Iterable[Sequence[tuple[str, Mapping]]], expected: Iterable[Sequence[tuple[str, Mapping]]]
) -> CallScore:
    """Expert-call precision / recall over examples: a call is right when name and arguments both match
    (``name_*``: the name alone). Each example gives its list of ``(name, arguments)`` calls."""
    tp = fp = fn = ntp = nfp = nfn = 0
    for pred, exp in zip(predicted, expected):
        pred_full = [_call_key(n, a) for n, a in pred]
        exp_full = [_call_key(n, a) for n, a in exp]
        t, p, e = _match(pred_full, exp_full)
        tp, fp, fn = tp + t, fp + p, fn + e
        t, p, e = _match([n for n, _ in pred], [n for n, _ in exp])
        ntp, nfp, nfn = ntp + t, nfp + p, nfn + e
    div = lambda a, b: a / b if b else 1.0  # noqa: E731
    return CallScore(div(tp, tp + fp), div(tp, tp + fn), div(ntp, ntp + nfp), div(ntp, ntp + nfn))


def numbers_in(text: str) -> list[float]:
    """The numbers written in a text (integers and decimals)."""
    return [float(x) for x in _NUMBER.findall(text)]


def is_grounded(answer: str, tool_texts: Sequence[str], tolerance: float = 0.051) -> bool:
    """True when every number in the answer appears (within rounding) among the tool results' numbers.
    An answer without numbers is grounded trivially."""
    available = [n for t in tool_texts for n in numbers_in(t)]
    return all(any(abs(n - a) <= tolerance * max(1.0, abs(a)) for a in available) for n in numbers_in(answer))


def _call_key(name: str, arguments: Mapping) -> str:
    import json

    return name + json.dumps({k: str(v).lower() for k, v in sorted(dict(arguments or {}).items())})


def _match(pred: list[str], exp: list[str]) -> tuple[int, int, int]:
    remaining = list(exp)
    tp = 0
    for p in pred:
        if p in remaining:
            remaining.remove(p)
            tp += 1
    return tp, len(pred) - tp, len(remaining)
