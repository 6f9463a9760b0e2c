"""Report scores: BLEU-4 and ROUGE-L against the reference report, and a finding-level F1 (findings
extracted from the generated report, negations respected, against the case's true findings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from vlm.eval.metrics import bleu4, extract_findings, finding_f1, rouge_l

__all__ = ["ReportItem", "FINDING_VOCABULARY", "score_reports"]

# finding (as data.instructions.report_findings names it) → phrases that assert it, per image kind
FINDING_VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "ct": {
        "liver tumor": ("liver tumor", "focal liver lesion", "liver lesion", "hepatic tumor"),
        "lung nodule": ("lung nodule", "pulmonary nodule"),
        "kidney cyst": ("kidney cyst", "renal cyst"),
    },
    "mri": {
        "brain tumor": ("brain tumor", "mass"),
        "edema": ("edema",),
        "enhancing tumor": ("enhancement on t1c", "solid enhancement", "rim enhancement"),
        "necrosis": ("necrotic core", "necrosis"),
    },
    "cxr": {
        "cardiomegaly": ("cardiomegaly", "heart is enlarged"),
        "pleural effusion": ("pleural effusion",),
        "nodule": ("nodule",),
        "pneumothorax": ("pneumothorax",),
        "consolidation": ("consolidation",),
    },
}


@dataclass
class ReportItem:
    """A generated report, its reference text and the case's true findings (``kind``: ct | mri | cxr)."""

    prediction: str
    reference: str
    findings: list[str]
    kind: str


def score_reports(items: Iterable[ReportItem]) -> dict:
    """``bleu4`` and ``rouge_l`` (0–100), finding ``precision`` / ``recall`` / ``f1`` (0–1), ``n``."""
    items = list(items)
    if not items:
        return {"n": 0}
    predicted = [extract_findings(i.prediction, FINDING_VOCABULARY[i.kind]) for i in items]
    truth = [set(i.findings) for i in items]
    f = finding_f1(predicted, truth)
    return {
        "n": len(items), "bleu4": bleu4([i.prediction for i in items], [i.reference for i in items]),
        "rouge_l": rouge_l([i.prediction for i in items], [i.reference for i in items]),
        "finding_precision": f["precision"], "finding_recall": f["recall"], "finding_f1": f["f1"],
    }
