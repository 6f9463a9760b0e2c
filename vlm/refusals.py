"""Questions the assistant answers without the model or an expert: requests for identifiers (removed at ingest),
clinical decisions that belong to the treating clinician, and greetings or requests for help.

Each answer says plainly why, and what the assistant can do instead; the agent flags the turn as a refusal, so the
audit log records it, and no expert runs. Patterns are written from how clinicians ask (not from any test set); a
question that also asks about the images is left to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from data.lexicon import find_terms

__all__ = ["Refusal", "refusal_for", "policy_kind", "CAPABILITIES"]

CAPABILITIES = ("measure what the images show — organ and lesion volumes, lesion counts, sizes and sides and the contrast "
                "phase on CT; brain tumour subregions, volumes and hemisphere on MRI; findings with their probabilities "
                "on a chest radiograph — and draft a report for you to check")

_IDENTITY = re.compile(
    r"\b(?:(?:patient'?s?|pt'?s?|his|her|their|the)\s+(?:full\s+|first\s+|last\s+|family\s+|real\s+)?(?:name|surname|address|"
    r"phone|telephone|date of birth|birth ?date|birthday|id|identity|mrn|nhs number|hospital number|insurance|initials|"
    r"contact details|age and name)|what(?:'s| is) (?:the )?(?:patient|pt)'?s? (?:name|id)|\bwho(?:'s| is) (?:this|the|that) "
    r"(?:patient|pt|person|guy|man|woman|lady|kid|child)\b|\bwho is (?:this|it)\b|\bwhose (?:scan|study|film|x-?ray|images?|mri|ct)\b|"
    r"medical record|\brecord number\b|\bmrn\b|\bdate of birth\b|\bdob\b|\bd\.o\.b\b|social security|\bssn\b|home address|"
    r"phone number|accession number|(?:name|identity|identifiers?|details) of (?:the|this) (?:patient|pt|person)|"
    r"\bidentify (?:the|this) (?:patient|pt|person)\b|\bpatient (?:identifiers?|details|demographics|info(?:rmation)?)\b|"
    r"\bpt (?:name|id|details)\b|\bname (?:of|on) (?:the|this) (?:scan|study|film|image)|\bwhen was (?:the patient|he|she) born\b|"
    r"\bhow old is (?:the patient|he|she|this patient)\b|\bwhat(?:'s| is) (?:his|her) (?:age|name)\b|"
    r"\b(?:patient|pt)'?s? (?:first|last|full|given|family)? ?name\b|\bname of (?:the )?(?:patient|pt)\b|\bwho (?:does|did) "
    r"(?:this|the) (?:scan|study|image|film) belong to\b|\bbelongs? to whom\b|\b(?:patient|pt) (?:number|no\.?|#)|"
    r"\bhospital (?:id|number|no)\b|\bdemographics\b|\bidentif(?:y|ying|iers?) (?:the )?(?:patient|pt|person)|"
    r"\b(?:patient|pt) identity\b|\breferring (?:physician|doctor)\b|\bwhich patient\b|"
    r"\bwhen was (?:this |the )?(?:patient|pt|person) born\b|\b(?:patient|pt)'?s? (?:age|sex|gender|birthday)\b|"
    r"\bhow old\b(?! (?:is|are) (?:the|this|that) (?:lesion|fracture|bleed|infarct|ha?emorrhage|clot|injury))|"
    r"\b(?:which|what) (?:hospital|institution|clinic|site|facility|scanner location)\b|\baccession\b|"
    r"\b(?:study|scan|exam|acquisition) (?:date|time)\b|\bwhen was (?:this|the) (?:scan|study|exam|image|film|x-?ray) "
    r"(?:done|taken|acquired|performed|made)\b|^\W*(?:(?:full |first |last |sur)?name|age|dob|mrn|birth ?date|initials)\W*$|"
    r"\bwhere does (?:the patient|the pt|he|she|this patient) live\b|\bwho (?:this|it|the (?:scan|study|film|images?)) belongs? to\b|"
    r"\bwho(?:'s| is| was)? (?:the |this )?(?:scan|study|film|image|mri|ct|x-?ray|radiograph) (?:of|for)\b|^\W*(?:the )?(?:patient|pt)\W*$|"
    r"\b(?:tell me|what do you know) about (?:the|this) (?:patient|pt)\b|\b(?:patient|pt)(?:'s)? (?:called|named)\b|"
    r"\bwhat(?:'s| is) (?:the |this )?(?:patient|pt) called\b|\bwhich person\b|\bwho was (?:scanned|imaged|x-?rayed)\b|"
    r"\b(?:read|show|print|dump|display|list)(?: out)? (?:me )?(?:the )?(?:dicom )?(?:header|tags)\b|\bheader\b.*\b(?:patient|name|identif)|"
    r"\bpatient ?(?:name|id)\b (?:tag|field|attribute)|\bpatientname\b|\bpatientid\b|"
    r"\bwhom? (?:does|did) (?:this|the) (?:scan|study|image|film|mri|ct|x-?ray|radiograph) belong to\b|"
    r"\bnhs (?:no|number|#)\b|\b(?:post|zip) ?code\b|^\W*(?:full |first |last |sur)?name\b(?: (?:please|pls|plz))?\W*$|"
    r"\blook up (?:the|this) (?:patient|pt)\b|\b(?:ehr|emr)\b)",
    re.IGNORECASE)
# a person named in the question ("Is this John Smith's scan?", "Confirm the patient is Mrs Jones"): written with capitals
_NAMED_PERSON = re.compile(r"\b(?:[Ii]s (?:this|it|the patient|this patient)|[Cc]onfirm (?:that )?(?:the patient|this|it|the scan) is|"
                           r"[Bb]elongs? to|scan of|study of)\s+(?P<name>(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+[A-Z][a-z]+|[A-Z][a-z]+\s+[A-Z][a-z]+)")
_DECISION = re.compile(
    r"\b(?:should (?:we|i|he|she|they|the patient|the pt|this patient) (?:be )?(?:operate|operated|treat|treated|start|stop|"
    r"give|get|have|receive|go|be discharged|discharge|admit|admitted|biopsy|biopsied|resect|resected|refer|referred|send|sent|"
    r"continue|increase|decrease|change|switch|book|schedule|consider|undergo|take)|"
    r"(?:what|which) (?:is the |would be the |are the )?(?:best |right |recommended |next )?(?:treatment|therapy|management|drug|"
    r"medication|medicine|dose|dosage|antibiotic|surgery|procedure|step|steps)|"
    r"how (?:should|do|would|can) (?:we|i|you) (?:treat|manage)|treatment (?:plan|options?)|management plan|"
    r"(?:what|which|how much) (?:\w+ )?(?:dose|dosage)\b|\bdosing\b|\bdose of\b|prescri(?:be|ption)|chemo(?:therapy)?|"
    r"radiotherapy|radiation therapy|immunotherapy|\bsurgery\b|\boperate\b|discharge|prognosis|life expectancy|survival|"
    r"how long (?:does|will|has|have) (?:he|she|the patient|they)|(?:is|are) (?:he|she|they|the patient) going to (?:die|survive|be ok|"
    r"make it|recover)|\bwill (?:he|she|they|the patient) (?:die|survive|recover|be ok)|\bterminal\b|\bpalliat|hospice|"
    r"\bhow many (?:mg|milligrams)\b|\bmg\b|\bmg/kg\b|\bwhat (?:do|should) (?:i|we) (?:do|give|tell)|"
    r"\b(?:can|could) (?:he|she|they|the patient) go home\b|\bsend (?:him|her|them|the patient) home\b|\bicu\b|\badmission\b|"
    r"\bneeds? (?:surgery|an operation|a biopsy|treatment|admission|antibiotics)\b|\bwhat should (?:we|i) do\b|\brecommend (?:a |an )?"
    r"(?:treatment|therapy|drug|dose|surgery|plan)\b|\bis (?:it|this) (?:cancer|malignant|benign)\b\?? *(?:should|what)\b|"
    r"\bnext steps?\b|\bhow (?:should|do) (?:we|i) proceed\b|\bwhat (?:now|next)\b|\b(?:start|stop|give|prescribe|increase|"
    r"decrease|switch|adjust|titrate) (?:him|her|them|the patient|the pt)?\s*(?:on )?(?:antibiotics?|steroids?|anticoagul\w*|"
    r"diuretics?|insulin|chemo\w*|medication|meds|drugs?|treatment|therapy|dexamethasone|heparin|furosemide|lasix)\b|"
    r"\b(?:antibiotics?|steroids?|anticoagul\w*|diuretics?|chemo\w*|dexamethasone|heparin|furosemide|lasix|"
    r"chest (?:tube|drain)|thoracentesis|thoracostomy|resection|craniotomy|biopsy|radiation|surgery|operation)\b.*\?|"
    r"\b(?:surgical|operative) (?:candidate|option)|\bwhen (?:can|should|will) (?:he|she|they|the patient) (?:go home|be "
    r"discharged|leave)\b|\bsafe to (?:discharge|send home|operate|fly|drive)\b|\bhow long (?:to|will|does) (?:live|survive)|"
    r"\bcurable\b|\bstage (?:of )?(?:the )?cancer\b|\b(?:have|has|got) (?:long )?(?:left )?to live\b|\bleft to live\b|"
    r"\b(?:months|weeks|years|time) (?:left|to live)\b|\bhow long (?:does|will|has|have|do|is) [\w ]{0,25}\b(?:live|survive)\b|"
    r"\b(?:in)?operable\b|\b(?:un)?resectable\b|\boperated? on\b|"
    r"\b(?:can|could|should|may) (?:the patient|the pt|he|she|they) (?:fly|drive|travel|work|exercise|return to)\b|"
    r"\bshould (?:i|we) (?:call|consult|contact|page|involve|get|refer to) (?:the )?(?:surgeons?|surgery|oncology|"
    r"oncologists?|cardiology|neurosurgery|specialists?|icu|team)\b|\bwhat follow[- ]?up\b|"
    r"\brecommend\w* (?:a |any )?follow[- ]?up\b|\bfollow[- ]?up (?:imaging|scan|study|interval)\b.*\brecommend|"
    r"\bsafe (?:to go|for) (?:home|discharge)\b|\bgo home\b|"
    r"\b(?:is|are) (?:a |an )?(?:biopsy|surgery|operation|(?:chest )?drain|treatment|admission|follow[- ]?up|repeat (?:scan|imaging|ct|mri))"
    r"\b.*\b(?:needed|required|necessary|indicated|warranted)\b|\brefer(?:ral)? (?:to|for)\b|"
    r"\bneeds? (?:a |an )?(?:chest (?:drain|tube)|drain|repeat (?:scan|imaging|ct|mri)|follow[- ]?up|operation|biopsy)\b|"
    r"\bshould (?:we|i) (?:repeat|order|request|rescan|re-?image|book)\b|\bwhat would you do\b|\bwhat(?:'s| is) the plan\b|"
    r"\b(?:go|get|return) back to (?:work|school|sport)\b|\bis (?:this|it) (?:an )?(?:emergency|urgent)\b|"
    r"\bwhat(?:'s| is| are) the (?:treatment|cure|therapy|management|treatment options)\b|"
    r"\b(?:can|could|should|may) (?:i|we) (?:give|administer|start|stop|drain|operate|remove|intubate|biopsy|anticoagulate)\b|"
    r"\bsafe to (?:give|start|stop|administer|anticoagulate|biopsy|drain|thrombolyse|lyse)\b|"
    r"\bneeds? to be (?:intubated|ventilated|admitted|operated|drained|treated|transfused)\b|\bwatchful waiting\b|"
    r"\bconservative management\b|\bchange (?:the )?management\b|\b(?:recommend|suggest)\w* (?:management|treatment)\b|"
    r"\bwhat (?:meds|medications?|drugs?)\b|\bshould (?:the|this|it|that) (?:\w+ ){0,2}be (?:removed|resected|drained|treated|"
    r"biopsied|operated|excised|irradiated)\b|\bshould (?:i|we|the patient|he|she) be (?:worried|concerned)\b|"
    r"\b(?:is|are) (?:the patient|he|she|they) dying\b|\bwill (?:this|it|the tumou?r) spread\b|\bhow aggressive\b|"
    r"\bwhat does (?:the patient|he|she|this patient) need\b)", re.IGNORECASE)
_GREETING = re.compile(r"^\W*(?:hi|hello|hey|hiya|howdy|yo|greetings|good (?:morning|afternoon|evening|day)|thanks?|thank you|thx|ty|"
                       r"cheers|ok|okay|morning|evening|hallo|hola|bonjour|sup|what'?s up)\b[\w\s,!.']*\??$", re.IGNORECASE)
_HELP = re.compile(r"\b(?:what can you do|what do you do|what are you able to|what are your (?:capabilities|functions|features)|"
                   r"how (?:do|can|should) i use (?:you|this|it|the assistant|m3)|who are you|what are you|help me use|^\W*help\W*$|"
                   r"^\W*help me\W*$|what (?:questions|kind of questions|things) can i ask|"
                   r"what (?:kinds?|types?|sorts?) of (?:questions|things) (?:can|could|should|do|may) i ask|"
                   r"what (?:can|does) (?:this|the) (?:assistant|tool|app|application|system|ai|bot|program|software|m3) do\b|what can i ask|how does this work|"
                   r"what is this (?:tool|app|assistant|for)|what (?:tools|experts|models) do you have|instructions|"
                   r"^\W*\?+\W*$|how can you help|can you help(?: me)?\W*$|what can you help with|usage|getting started|"
                   r"what (?:are you|is this) (?:for|good for|capable of)|what (?:can|do) you (?:offer|support|know)|tell me about "
                   r"yourself|introduce yourself|how does (?:this|it|m3) work|what (?:should|could|can) i (?:ask|do|type)|"
                   r"\bmenu\b|\bcommands\b|\bwhat features\b|\bhow to use\b|are you (?:a bot|an ai|human)|"
                   r"\bwhat (?:kinds? of |types? of |sort of )?(?:\w+ )?can you (?:measure|do|find|detect|segment|answer|check)\b|"
                   r"\bexplain what you (?:are|do)\b|\btips?\b.*\b(?:using|use)\b|\bwhat (?:experts|tools|models) (?:can|do|will) "
                   r"you (?:run|use|call|have)\b|\bwho (?:made|built|created|developed|trained|wrote) you\b|"
                   r"\b(?:approved|cleared|certified|validated|licensed) for (?:clinical|diagnostic) use\b|\bfor clinical use\b|"
                   r"\bfda\b|\bce[- ]marked?\b)", re.IGNORECASE)
# a question about the assistant itself: it names the assistant and what it is, does or supports ("How accurate are
# you?", "Which modalities do you support?", "list your functions")
_ASSISTANT = re.compile(r"\b(?:you|your|yourself|this (?:thing|tool|app|assistant|system|ai|bot|program|software)|m3)\b|"
                        r"^\W*(?:list|show|name) (?:the |your |all )?(?:functions|features|commands|experts|tools|models)\b", re.IGNORECASE)
_ASSISTANT_TOPIC = re.compile(r"\b(?:work|works|purpose|support|supports|supported|handle|read|accurate|accuracy|reliable|"
                              r"limitations?|functions?|features?|experts?|tools?|models?|modalit(?:y|ies)|types? of (?:scans?|studies|"
                              r"images?|imaging)|overview|capable|capabilit(?:y|ies)|phrase|ask|upload|load|radiologist|doctor|ai|bot|"
                              r"human|talking|trained|trust|validated|intended|name|job|role)\b", re.IGNORECASE)
_HELP_ALONE = re.compile(r"^\W*(?:i need |need |please |can i get |get )?(?:some )?help(?: please| me| needed)?\W*$|"
                         r"^\W*(?:how(?:'s| is) it going|are you (?:there|awake|on|working|online)|welcome|any tips|"
                         r"what(?:'s| is) the point of (?:this|you|m3))\W*$|\bwhere do i (?:start|begin)\b|"
                         r"\bwhat (?:can|does) m3 do\b|\bshow me what you can do\b|\bdescribe your (?:abilities|capabilities|skills|features)\b|"
                         r"\bhow can (?:this|you|m3|it) help(?: me)?\b(?!.*\b(?:liver|lung|kidney|tumou?r|effusion|nodule|this (?:scan|study|film|case)))|"
                         r"\bbefore using (?:this|you|m3)\b|\bis (?:this|it|m3) (?:tool |app |assistant )?safe to use\b|"
                         r"\bis (?:this|it) (?:an? )?(?:ai|bot|robot|human|person|real doctor|chatbot)\b|"
                         r"\bhow (?:do|can|should|would) i (?:upload|load|open|add|import|phrase|word|ask|start)\b|"
                         r"\bwho am i (?:talking|speaking|chatting) (?:to|with)\b|"
                         r"^\W*what(?:'s| is) m3\W*$", re.IGNORECASE)
_ABOUT_IMAGES = re.compile(r"\b(?:volume|size|measure|segment|lesion|tumou?r|mass|nodule|cyst|effusion|pneumothorax|"
                           r"consolidation|cardiomegaly|liver|spleen|kidney|lung|heart|aorta|spine|edema|oedema|"
                           r"hemisphere|phase|contrast|slice|report|findings?|normal|brain)\b", re.IGNORECASE)

# what makes a question name the study on screen rather than the assistant's abilities ("what findings can you detect?"
# is help; "can you measure the liver?" and "hi, is there an effusion?" ask about the study)
_ABOUT_THIS_STUDY = re.compile(r"\b(?:the|this|these|that|those|his|her|its|their|my|any|there(?:'s)?)\s+(?:\w+\s+){0,2}?"
                               r"(?:liver|spleen|kidneys?|lungs?|heart|aorta|spine|brain|tumou?r|mass|lesions?|nodules?|cysts?|"
                               r"effusion|pneumothorax|consolidation|scan|study|film|image|slice|ct|mri|x-?ray|radiograph|"
                               r"volume|size|phase|report|findings?|patient)\b|\b(?:is|are) there\b|\bhow (?:big|large|many|much)\b|"
                               r"^\W*(?:hi|hello|hey)?\W*(?:what(?:'s| is)|measure|segment|report|check|assess|is|are|does|do)\b(?!.*\byou(?:r|rs|rself)?\b)",
                               re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """An answer given without the model: ``kind`` is ``identity``, ``clinical decision`` or ``help``."""

    kind: str
    answer: str


_ANSWERS = {
    "identity": ("identity", "I can't give that: names, record numbers, birth dates and other identifiers are removed when a "
                             "study is loaded, so I never see them. Check the patient's identity in your hospital system (PACS "
                             f"or EHR). What I can do: {CAPABILITIES}."),
    "decision": ("clinical decision", "That is a decision for the treating clinician, and I can't advise on treatment, dosing, "
                                      f"discharge or prognosis. What I can do: {CAPABILITIES}."),
    "help": ("help", "I'm m3, an imaging assistant for de-identified studies. Ask about the study on screen — for example "
                     "\"What is the liver volume?\", \"Is there a pleural effusion?\" or \"Which hemisphere is the tumour in?\" — "
                     f"and I {CAPABILITIES}, quoting the expert results."),
}


def policy_kind(question: str) -> str:
    """``identity``, ``decision`` or ``help`` when ``question`` is answered by policy, else ""."""
    q = question.strip()
    person = _NAMED_PERSON.search(q)
    if _IDENTITY.search(q) or (person and not find_terms(person.group("name"))):  # "Is this Right Kidney enlarged?" names no one
        return "identity"
    if _DECISION.search(q):
        return "decision"
    if (_GREETING.match(q) or _HELP.search(q)) and not (_ABOUT_IMAGES.search(q) and _ABOUT_THIS_STUDY.search(q)):
        return "help"
    if _HELP_ALONE.search(q) or (_ASSISTANT.search(q) and _ASSISTANT_TOPIC.search(q) and not _ABOUT_THIS_STUDY.search(q)
                                and not _ABOUT_IMAGES.search(q)):
        return "help"
    return ""


def refusal_for(question: str, kind: str | None = None) -> Refusal | None:
    """The refusal or help answer ``question`` calls for (``kind`` from a parsed intent, else read here), or None
    when the model should answer it."""
    kind = policy_kind(question) if kind is None else kind
    return Refusal(*_ANSWERS[kind]) if kind in _ANSWERS else None
