"""Short reports (Findings / Impression) of what a phantom view shows, for the ``align`` stage.

Every sentence comes from the view's visible facts, so a caption never mentions what the picture does
not show. ``report_findings`` gives the canonical finding list of the picture (what its caption states);
``study_findings`` the list a report on the case must state (the finding-level F1 of the evaluation).
"""

from __future__ import annotations

import numpy as np

from data.instructions.paraphrase import expand
from data.instructions.views import CaseView

__all__ = ["caption", "caption_prompt", "report_findings", "study_findings"]

_PROMPTS = (
    "{Describe|Summarise|Report on} {this image|this scan|the image}{.|, please.| briefly.}",
    "{Write|Give me|Draft} a {short|brief|concise} {radiology report|report} {for|of} this {image|scan|study}.",
    "{What do you see|What are the findings} {here|in this image}?",
    "What does this {image|scan} show?",
    "{Please provide|Provide} {the findings and impression|findings and an impression} for this {image|scan}.",
    "{Caption|Describe} this {medical image|radiology image}.",
)
_ORGAN_LIST_INTRO = ("The slice shows the", "Visible structures: the", "This level includes the")


def caption_prompt(rng: np.random.Generator) -> str:
    """A human request for a caption / short report."""
    return expand(_PROMPTS[int(rng.integers(len(_PROMPTS)))], rng)


def report_findings(view: CaseView) -> list[str]:
    """Canonical findings of the view, e.g. ``["liver tumor", "left lung nodule"]`` or ``["pleural effusion
    (right)"]``; empty for a normal picture."""
    f = view.facts
    if view.kind == "ct":
        return sorted({les["type"] for les in f["lesions"]})
    if view.kind == "mri":
        if not f["tumor_visible"]:
            return []
        out = ["brain tumor", "edema"] if f["edema"] else ["brain tumor"]
        out += ["enhancing tumor"] if f["enhancing"] else []
        out += ["necrosis"] if f["necrosis"] else []
        return out
    return [name for name, on in f["findings"].items() if on]


def study_findings(view: CaseView) -> list[str]:
    """The findings a report on the case must state. A CT report is written with the segmentation expert,
    which reads the whole volume, so it names every lesion type of the study, not only those the shown
    slice cuts; a radiograph is its own study; a brain MRI report is written from the slice through the
    tumour (``report_findings``)."""
    if view.kind == "ct":
        return sorted({les["type"] for les in view.truth["lesions"]})
    return report_findings(view)


def caption(view: CaseView, rng: np.random.Generator) -> str:
    """A two-part report ``Findings: ... Impression: ...`` of ``view``."""
    if view.kind == "ct":
        return _ct(view, rng)
    if view.kind == "mri":
        return _mri(view, rng)
    return _cxr(view, rng)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _ct(view: CaseView, rng) -> str:
    f = view.facts
    phase = {"non-contrast": "without intravenous contrast", "arterial": "in the arterial phase", "portal venous": "in the portal venous phase"}[f["phase"]]
    head = f"Axial CT of the {f['region']} {phase}."
    body = [f"{_ORGAN_LIST_INTRO[int(rng.integers(3))]} {_join(f['organs'])}." if f["organs"] else "No major organ is cut by this slice."]
    groups: dict[tuple[str, str], list[dict]] = {}
    for les in f["lesions"]:
        groups.setdefault((les["type"], les["organ"]), []).append(les)
    impressions = []
    for (kind, organ), items in sorted(groups.items()):
        biggest = max(items, key=lambda d: d["diameter_mm"])
        n = len(items)
        what = {"liver tumor": "focal liver lesion", "lung nodule": "pulmonary nodule", "kidney cyst": "renal cyst"}[kind]
        count = "A" if n == 1 else f"{n}"
        body.append(f"{count} {biggest['size'] if n == 1 else ''} {what}{'s' if n > 1 else ''} in the {organ}"
                    f"{'' if n == 1 else ', the largest ' + biggest['size']}, about {biggest['diameter_mm']:.0f} mm across.".replace("  ", " "))
        impressions.append(f"{kind}{'s' if n > 1 else ''} ({organ})")
    if not f["lesions"]:
        body.append("No focal lesion in this slice.")
    impression = ("; ".join(impressions).capitalize() + ".") if impressions else "No focal abnormality on this slice."
    return f"{head} Findings: {' '.join(body)} Impression: {impression}"


def _mri(view: CaseView, rng) -> str:
    f = view.facts
    head = "Axial brain MRI, T1, T1c (post-contrast), T2 and FLAIR."
    if not f["tumor_visible"]:
        body = "Grey and white matter are symmetric. The ventricles are normal. No mass, no abnormal enhancement, no FLAIR signal abnormality."
        return f"{head} Findings: {body} Impression: No brain tumor on this slice."
    parts = [f"A {f['size']} mass in the {f['hemisphere']} {f['lobe']} lobe"]
    if f["enhancing"] and f["necrosis"]:
        parts.append("with rim enhancement on T1c around a necrotic core that is dark on T1 and bright on T2")
    elif f["enhancing"]:
        parts.append("with solid enhancement on T1c")
    else:
        parts.append("without contrast enhancement")
    body = ", ".join(parts) + "."
    if f["edema"]:
        body += " Surrounding FLAIR and T2 hyperintense edema."
    grade = "high-grade glioma" if f["enhancing"] else "low-grade glioma"
    extras = (" with necrosis" if f["necrosis"] else "") + (" and edema" if f["edema"] else "")
    return f"{head} Findings: {body} Impression: {f['hemisphere'].capitalize()} {f['lobe']} brain tumor{extras}, suggestive of a {grade}."


def _cxr(view: CaseView, rng) -> str:
    f = view.facts
    on, lat, det = f["findings"], f["laterality"], f["details"]
    side = lambda name: "bilateral" if lat[name] == "bilateral" else lat[name]  # noqa: E731
    body = [f"Frontal ({f['view']}) chest radiograph."]
    body.append(f"The heart is enlarged (cardiothoracic ratio about {f['ctr']:.2f})." if on["cardiomegaly"]
                else f"Heart size is normal (cardiothoracic ratio about {f['ctr']:.2f}).")
    imp = []
    if on["pleural effusion"]:
        body.append(f"{side('pleural effusion').capitalize()} pleural effusion blunting the costophrenic angle{'s' if lat['pleural effusion'] == 'bilateral' else ''}.")
        imp.append(f"{side('pleural effusion')} pleural effusion")
    if on["pneumothorax"]:
        body.append(f"{lat['pneumothorax'].capitalize()} pneumothorax with a visible pleural line.")
        imp.append(f"{lat['pneumothorax']} pneumothorax")
    if on["consolidation"]:
        zone = det["consolidation"]["zone"]
        body.append(f"Consolidation in the {lat['consolidation']} {zone} zone.")
        imp.append(f"{lat['consolidation']} {zone} zone consolidation")
    if on["nodule"]:
        d = det["nodule"]
        body.append(f"A {d['diameter_mm']:.0f} mm nodule in the {lat['nodule']} {d['zone']} zone.")
        imp.append(f"{lat['nodule']} lung nodule")
    if on["cardiomegaly"]:
        imp.insert(0, "cardiomegaly")
    if not any(on[k] for k in ("pleural effusion", "pneumothorax", "consolidation", "nodule")):
        body.append("The lungs are clear. No effusion, no pneumothorax.")
    impression = ("; ".join(imp).capitalize() + ".") if imp else "No acute cardiopulmonary abnormality."
    return f"Findings: {' '.join(body)} Impression: {impression}"
