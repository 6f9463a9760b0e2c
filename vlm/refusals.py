"""Questions the assistant answers without the model or an expert: requests for identifiers (removed at ingest),
clinical decisions that belong to the treating clinician, and greetings or requests for help.

Each answer says plainly why, and what the assistant can do instead; the agent flags the turn as a refusal, so the
audit log records it, and no expert runs. Patterns are written from how clinicians ask (not from any test set); a
question that also asks about the images is left to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Refusal", "refusal_for", "CAPABILITIES"]

CAPABILITIES = ("measure what the images show — organ and lesion volumes, lesion counts, sizes and sides and the contrast "
                "phase on CT; brain tumour subregions, volumes and hemisphere on MRI; findings with their probabilities "
                "on a chest radiograph — and draft a report for you to check")

_IDENTITY = re.compile(
    r"\b(?:(?:patient'?s?|his|her|their)\s+(?:full\s+)?(?:name|surname|address|phone|date of birth|birth ?date|birthday|"
    r"id|mrn|nhs number|insurance)|what(?:'s| is) (?:the )?(?:patient|pt)'?s? name|who is (?:this|the) (?:patient|pt)|"
    r"medical record number|\bmrn\b|date of birth|\bdob\b|social security|\bssn\b|home address|phone number|"
    r"(?:name|identity) of (?:the|this) (?:patient|pt))", re.IGNORECASE)
_DECISION = re.compile(
    r"\b(?:should (?:we|i|he|she|they|the patient) (?:be )?(?:operate|operated|treat|treated|start|stop|give|get|have|"
    r"receive|go|be discharged|discharge|admit|admitted|biopsy|resect)|"
    r"(?:what|which) (?:is the |would be the )?(?:best |right )?(?:treatment|therapy|management|drug|medication|dose|dosage)|"
    r"how (?:should|do|would) (?:we|i|you) (?:treat|manage)|treatment (?:plan|options?)|"
    r"(?:what|which|how much) (?:\w+ )?(?:dose|dosage)\b|\bdosing\b|prescri(?:be|ption)|chemo(?:therapy)?|radiotherapy|"
    r"discharge|prognosis|life expectancy|survival|how long (?:does|will) (?:he|she|the patient)|"
    r"(?:is|are) (?:he|she|they|the patient) going to (?:die|survive|be ok))", re.IGNORECASE)
_GREETING = re.compile(r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening)|thanks?|thank you|cheers)\b[\w\s,!.]*$", re.IGNORECASE)
_HELP = re.compile(r"\b(?:what can you do|what do you do|how (?:do|can) i use (?:you|this)|who are you|what are you|"
                   r"help me use|^\W*help\W*$|what (?:questions|can i ask))", re.IGNORECASE)
_ABOUT_IMAGES = re.compile(r"\b(?:volume|size|measure|segment|lesion|tumou?r|mass|nodule|cyst|effusion|pneumothorax|"
                           r"consolidation|cardiomegaly|liver|spleen|kidney|lung|heart|aorta|spine|edema|oedema|"
                           r"hemisphere|phase|contrast|slice|report|findings?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """An answer given without the model: ``kind`` is ``identity``, ``clinical decision`` or ``help``."""

    kind: str
    answer: str


def refusal_for(question: str) -> Refusal | None:
    """The refusal or help answer ``question`` calls for, or None when the model should answer it."""
    q = question.strip()
    if _IDENTITY.search(q):
        return Refusal("identity", "I can't give that: names, record numbers, birth dates and other identifiers are "
                                   "removed when a study is loaded, so I never see them. Check the patient's identity in "
                                   f"your hospital system (PACS or EHR). What I can do: {CAPABILITIES}.")
    if _DECISION.search(q):
        return Refusal("clinical decision", "That is a decision for the treating clinician, and I can't advise on "
                                            f"treatment, dosing, discharge or prognosis. What I can do: {CAPABILITIES}.")
    if (_GREETING.match(q) or _HELP.search(q)) and not _ABOUT_IMAGES.search(q):
        return Refusal("help", "I'm m3, an imaging assistant for de-identified studies. Ask about the study on screen "
                               "— for example \"What is the liver volume?\", \"Is there a pleural effusion?\" or \"Which "
                               f"hemisphere is the tumour in?\" — and I {CAPABILITIES}, quoting the expert results.")
    return None
