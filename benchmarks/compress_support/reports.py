"""Templated radiology reports with closed yes/no questions, for two "sites" that phrase them differently.

Site "A" (the original) writes reports one way, with sizes in mm; site "B" (the new site for MFT
adaptation) uses other words, another layout and sizes in cm, and its lesions run larger. Every
question is answered by the report it follows, so a language model answers it by reading.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Report", "QAItem", "generate_reports", "qa_items", "training_texts"]

# (region, organ phrase A, organ phrase B, lesion A, lesion B, exam A, exam B)
_FINDINGS = [
    ("liver", "the liver", "the hepatic parenchyma", "hypodense lesion", "low-attenuation focus", "CT abdomen with contrast", "contrast-enhanced abdominal CT"),
    ("kidney", "the {side} kidney", "the {side} renal cortex", "simple cyst", "fluid-density cortical lesion", "CT abdomen with contrast", "contrast-enhanced abdominal CT"),
    ("lung", "the {side} upper lobe", "the {side} apical segment", "solid nodule", "pulmonary opacity", "CT chest without contrast", "non-contrast thoracic CT"),
    ("brain", "the {side} frontal lobe", "the {side} frontal white matter", "enhancing mass", "contrast-avid lesion", "MRI brain with gadolinium", "gadolinium-enhanced cranial MR"),
    ("pancreas", "the pancreatic head", "the head of the pancreas", "hypoenhancing mass", "poorly enhancing focus", "CT abdomen with contrast", "contrast-enhanced abdominal CT"),
]
_EXTRAS_A = ["No pleural effusion.", "The spleen is normal in size.", "No free fluid.", "Mild degenerative changes of the spine.", "The heart size is normal."]
_EXTRAS_B = ["Pleural spaces clear.", "Splenic dimensions within limits.", "Peritoneum unremarkable.", "Spondylotic change noted.", "Cardiac silhouette preserved."]


@dataclass
class Report:
    text: str
    region: str
    side: str
    present: bool
    size_mm: int


@dataclass
class QAItem:
    prompt: str  # report + question, ending with "A:"
    answer: str  # "yes" or "no"


def generate_reports(n: int, site: str = "A", seed: int = 0) -> list[Report]:
    """``n`` reports of ``site`` ("A" original, "B" shifted phrasing, units and sizes)."""
    rng = random.Random(f"{site}-{seed}")
    return [_one_report(rng, site) for _ in range(n)]


def qa_items(reports: list[Report], seed: int = 0) -> list[QAItem]:
    """Two closed questions per report (presence, size threshold / side), balanced yes / no."""
    rng = random.Random(seed)
    items = []
    for r in reports:
        other = rng.choice([f[0] for f in _FINDINGS if f[0] != r.region])
        asked = r.region if rng.random() < 0.5 else other
        items.append(QAItem(f"{r.text}\nQ: Is there a lesion in the {asked}? A:", "yes" if r.present and asked == r.region else "no"))
        if r.present:
            threshold = rng.choice([10, 20, 30, 40])
            items.append(QAItem(f"{r.text}\nQ: Is the {r.region} lesion larger than {threshold} mm? A:", "yes" if r.size_mm > threshold else "no"))
    return items


def training_texts(reports: list[Report], seed: int = 0) -> list[str]:
    """Each report followed by its questions and answers (what the LM trains on)."""
    texts = []
    by_report = {}
    for item in qa_items(reports, seed):
        report = item.prompt.split("\nQ:")[0]
        by_report.setdefault(report, []).append(item.prompt[len(report):] + " " + item.answer)
    for report, qas in by_report.items():
        texts.append(report + "".join(qas))
    return texts


def _one_report(rng: random.Random, site: str) -> Report:
    region, organ_a, organ_b, lesion_a, lesion_b, exam_a, exam_b = rng.choice(_FINDINGS)
    side = rng.choice(["left", "right"])
    present = rng.random() < 0.6
    size_mm = rng.randint(4, 45) if site == "A" else rng.randint(15, 60)
    extras = rng.sample(_EXTRAS_A if site == "A" else _EXTRAS_B, 2)
    if site == "A":
        organ = organ_a.format(side=side)
        finding = f"{organ.capitalize()} demonstrates a {size_mm} mm {lesion_a}." if present else f"{organ.capitalize()} is unremarkable."
        impression = f"{lesion_a.capitalize()} of {organ} measuring {size_mm} mm." if present else "No acute abnormality."
        text = f"EXAM: {exam_a}.\nFINDINGS: {finding} {' '.join(extras)}\nIMPRESSION: {impression}"
    else:
        organ = organ_b.format(side=side)
        finding = f"A {lesion_b} of {size_mm / 10:.1f} cm is seen in {organ}." if present else f"No focal abnormality in {organ}."
        impression = f"{organ.capitalize()}: {lesion_b}, {size_mm / 10:.1f} cm." if present else "Study within normal limits."
        text = f"Study: {exam_b}. Report: {' '.join(extras)} {finding} Conclusion: {impression}"
    return Report(text=text, region=region, side=side, present=present, size_mm=size_mm)
