"""The question, parsed once per turn: what is asked, about what, in which form, and which expert answers it.

``parse_question`` reads a clinician's question in their own words — full questions, terse imperatives, fragments,
abbreviations, lay terms, typos, two questions in one — into a ``QuestionIntent``: the intent family (presence,
count, size, side, volume, phase, comparison, normality, likelihood, report, run an expert, segment everything,
modality, series, identity, clinical decision, help), the structures and findings it names (through the clinical
lexicon ``data.lexicon``, narrowed to the study's modalities), the side it names, its form (yes / no, either-or, wh,
command), whether it is about the slice on screen or the whole study, and the experts that can answer it. The
agent, the refusals, the reference constraint and the slice facts read these fields; nothing re-parses the question.

Cue words are written from clinical usage, never from an evaluation set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from data.lexicon import TERMS, Term, find_terms, normal_state, normalise_text, one_typo, words_of
from data.slice_facts import asks_about_shown_slice
from vlm.answer_keys import PHASES as _PHASES
from vlm.answer_keys import part_keys as _part_keys
from vlm.refusals import policy_kind

__all__ = ["QuestionIntent", "parse_question", "FAMILIES", "POLICY_FAMILIES", "HEADER_FAMILIES", "term_modalities", "lexicon_modality",
           "declared_terms"]

FAMILIES = ("presence", "count", "size", "side", "volume", "phase", "comparison", "normality", "likelihood", "report",
            "run_expert", "segment_all", "modality", "series", "identity", "decision", "help", "other")
POLICY_FAMILIES = ("identity", "decision", "help")  # answered by policy, no model, no expert
HEADER_FAMILIES = ("modality", "series")  # answered from the de-identified header, no expert

# study modality → the lexicon's modality tag (radiographs are CR in the lexicon whatever the header says)
_LEXICON_MODALITY = {"CT": "CT", "MR": "MR", "CR": "CR", "DX": "CR"}
_SIDE_WORD = {"left": r"left|\blt\b|\bl\b|sinistr", "right": r"right|\brt\b|\br\b|dextr"}


@dataclass(frozen=True)
class QuestionIntent:
    """One question's meaning.

    family: one of ``FAMILIES``. form: ``yes_no``, ``either_or``, ``wh`` or ``command``.
    terms: lexicon keys the question names (``data.lexicon.TERMS``), in order, narrowed to the study's modalities.
    side: the one side of the body it names ("left" / "right"; "" for both or neither).
    options: the choices of an either-or question ("left", "right"; phases), else empty.
    scope: ``slice`` (the picture on screen) or ``study``.
    negated: asked in the negative ("No pneumothorax, right?").
    asks_normal: for ``normality``, whether "yes" means normal ("Is the heart normal?") or abnormal ("Anything abnormal?").
    asks_count: it asks how many ("How many abnormalities?": a normality question answered with the number first).
    experts: experts that can answer it on this study, best first (those declaring a named term before the others).
    parts: the sub-questions of a multi-part question. elsewhere: terms it names that no expert of the study's
    modalities reports (a liver asked of a radiograph). declared: the experts' own terms the lexicon lacks.
    """

    text: str
    family: str = "other"
    form: str = "wh"
    terms: tuple[str, ...] = ()
    side: str = ""
    options: tuple[str, ...] = ()
    scope: str = "study"
    negated: bool = False
    asks_normal: bool = True
    asks_count: bool = False
    experts: tuple[str, ...] = ()
    parts: tuple["QuestionIntent", ...] = field(default=(), repr=False)
    elsewhere: tuple[str, ...] = ()
    declared: tuple[Term, ...] = field(default=(), repr=False, compare=False)

    @property
    def needs_expert(self) -> bool:
        """Whether an expert result answers it (not a policy or header question, and not unparsed)."""
        return any(p.family not in POLICY_FAMILIES + HEADER_FAMILIES + ("other",) for p in self.all_parts)

    @property
    def all_parts(self) -> tuple["QuestionIntent", ...]:
        return self.parts or (self,)

    def answer_keys(self) -> tuple[str, ...]:
        """The result fields (``[[key]]`` references, ``data.tool_text``) that answer it, part by part."""
        keys: list[str] = []
        for part in self.all_parts:
            keys += [k for k in _part_keys(part) if k not in keys]
        return tuple(keys)


def parse_question(question: str, modalities: Sequence[str] = (), experts: Mapping[str, Sequence[str]] | None = None,
                   history: Sequence["QuestionIntent"] = (),
                   vocabularies: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]] | None = None,
                   kinds: Mapping[str, Mapping[str, str]] | None = None) -> QuestionIntent:
    """Parse ``question`` asked about a study of ``modalities`` ("CT", "MR", "DX" …).

    experts: expert name → the modalities it reads (``Expert.modalities``); the intent's ``experts`` are those reading
    the study, ordered by the terms named. history: earlier intents of the conversation: a follow-up that names
    nothing ("and how big is it?") takes the last named terms. vocabularies: expert name → its ``Expert.vocabulary``
    (argument → choice → words): choices the lexicon lacks are read as terms too (``declared_terms``), of the kinds in
    ``kinds`` (expert name → its ``Expert.vocabulary_kinds``).
    """
    declared = declared_terms(experts or {}, vocabularies or {}, kinds or {})
    text = " ".join(question.replace("<image>", " ").split())
    kind = policy_kind(text)
    if kind:
        return QuestionIntent(text, family=kind, form="wh")
    tags = {_LEXICON_MODALITY.get(m, m) for m in modalities}
    clauses = [piece for clause in _clauses(text) for piece in _family_split(clause, tags, declared)]
    parts: list[QuestionIntent] = []
    last_terms: tuple[str, ...] = next((h.terms for h in reversed(history) if h.terms), ())
    for clause in clauses:
        part = _parse_clause(clause, tags, text, declared)
        if not part.terms and part.family not in HEADER_FAMILIES + ("report", "segment_all", "run_expert", "other") and last_terms:
            part = replace(part, terms=last_terms)
            if parts and parts[-1].family == "presence" and parts[-1].form == "command" and parts[-1].terms == last_terms:
                parts.pop()  # "the cyst, which side is it on?": the first clause only names what the question is about
        if part.terms:
            last_terms = part.terms
        if part.family != "other" or not parts:
            parts.append(part)
    readers = _readers(modalities, experts or {})
    if any(p.family != "other" for p in parts):
        parts = [p for p in parts if p.family != "other"]
    named = {t for p in parts for t in p.terms}  # an expert declaring a named term answers first ("gallbladder")
    readers = tuple(sorted(readers, key=lambda n: not named & _choices((vocabularies or {}).get(n) or {})))
    on_screen = _on_screen(normalise_text(text))  # "On this slice, which side is the cyst?"
    parts = [replace(p, experts=readers, scope="slice" if on_screen else p.scope, declared=declared) for p in parts]
    if len(parts) == 1:
        return replace(parts[0], text=text)
    first = parts[0]
    return replace(first, text=text, terms=tuple(dict.fromkeys(t for p in parts for t in p.terms)), parts=tuple(parts),
                   elsewhere=tuple(dict.fromkeys(t for p in parts for t in p.elsewhere)))


def term_modalities(key: str) -> str:
    """The lexicon's modality of a term ("CT", "MR", "CR"); "" when unknown."""
    term = TERMS.get(key)
    return term.modality if term else ""


def lexicon_modality(modality: str) -> str:
    """A study's or an expert's modality as the lexicon tags terms ("DX" → "CR")."""
    return _LEXICON_MODALITY.get(modality, modality)


def declared_terms(experts: Mapping[str, Sequence[str]], vocabularies: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]],
                   kinds: Mapping[str, Mapping[str, str]] | None = None) -> tuple[Term, ...]:
    """The choices experts declare in their vocabularies that the lexicon lacks, as terms of the expert's modality, of
    the kind the expert declares (``kinds``: expert → choice → "organ" / "lesion" / "finding"); undeclared, a lesion
    when its last word is a lexicon lesion's or finding's ("thyroid nodule"), else a structure ("gallbladder")."""
    out: dict[str, Term] = {}
    for name, vocabulary in vocabularies.items():
        tag = lexicon_modality(next(iter(experts.get(name) or ()), ""))
        for choice, words in ((c, w) for by_choice in vocabulary.values() for c, w in by_choice.items()):
            key = " ".join(choice.lower().split())
            if key in TERMS or key in out or not key:
                continue
            kind = ((kinds or {}).get(name) or {}).get(choice) or ("lesion" if words_of(key)[-1:] and words_of(key)[-1] in _LESION_HEADS
                                                                    else "organ")
            out[key] = Term(key, kind, tuple(dict.fromkeys(str(w) for w in words)), modality=tag)
    return tuple(out.values())


# the last words of the lexicon's lesions and findings ("nodule", "cyst", "effusion"): an expert's own term ending in one is a lesion
_LESION_HEADS = frozenset(words_of(n)[-1] for t in TERMS.values() if t.kind in ("lesion", "finding") for n in t.names if words_of(n))


def _choices(vocabulary: Mapping[str, Mapping[str, Sequence[str]]]) -> set[str]:
    return {" ".join(c.lower().split()) for by_choice in vocabulary.values() for c in by_choice}


# ---------------------------------------------------------------------------------------------------------
# one clause

_YES_NO_START = re.compile(r"^(?:is|are|does|do|did|can|could|has|have|was|were|will|would|should|any|anything|"
                           r"is there|are there|no|not|r/o|rule out|eval(?:uate)? for|check for|look for|exclude|"
                           r"see|seen|present|evidence of)\b")
_WH = re.compile(r"\b(?:which|what|where|how|when|who|whats|what's)\b")
_COMMAND = re.compile(r"^(?:run|segment|measure|calculate|compute|quantify|estimate|give|show|tell|list|name|describe|"
                      r"summari[sz]e|report|draft|write|generate|outline|contour|delineate|label|classify|check|look|assess|"
                      r"evaluate|eval|find|count|determine|get|provide|please|pls|plz|can you|could you|would you)\b")
_POLITE = re.compile(r"^(?:please|pls|plz|kindly|hi|hello|hey|ok|okay|so|and|also|now|then|quick question|"
                     r"(?:can|could|would|will) you(?: please)?(?: tell me| check| let me know| confirm| see)?(?: for me)?|"
                     r"looking at (?:the|this) (?:\w+ )?(?:image|scan|study|film|picture|slice|ct|mri|x-?ray|radiograph)|"
                     r"i(?:'d| would) like to know|i want to know|do you know|tell me|let me know|"
                     r"i need(?: to know)?|help me(?: with)?)\b[\s,:]*")


def _parse_clause(clause: str, tags: set[str], whole: str, declared: tuple[Term, ...] = ()) -> QuestionIntent:
    q = _corrected(normalise_text(re.sub(r",\s*(?:right|correct|yes|no|true|ok|okay)\s*\?\s*$", "?", clause)))  # tag question
    asked = clause.rstrip().endswith("?")
    core = q
    for _ in range(3):  # lead-ins before the question proper: "could you tell me: is there …"
        stripped = _POLITE.sub("", core).lstrip(": ,")
        if stripped == core:
            break
        core = stripped
    core = core or q
    terms, elsewhere = _terms(clause, tags, declared)
    side = _named_side(q)
    negated = bool(re.match(r"^(?:no|not|there(?:'s| is) no|without)\b", core)) or bool(re.search(r"\bno \w+.*\b(?:right|correct|yes)\s*\??$", q))
    either = _either_or(q)
    family = _family(q, core, tuple(t for t in terms if t in TERMS), tags, either)
    if family == "other" and any(t not in TERMS for t in terms):
        family = "presence"  # an expert's own structure or finding named without a measurement cue: is it there?
    if either and set(either) == {"left", "right"} and family in ("presence", "other", "size"):
        family = "side"
    absent = normal_state(clause)  # "is the lung fully expanded?": is the film normal as to the pneumothorax
    if absent and (not tags or TERMS[absent].modality in tags) and family in ("normality", "presence", "other", "volume", "size"):
        family, terms = "normality", (absent,) + tuple(t for t in terms if t != absent and TERMS.get(t) is not None
                                                       and TERMS[t].kind != "organ")
        elsewhere = ()
    if family == "normality":  # "is the liver normal?": the organ's lesions decide, beside its volume
        terms = terms + tuple(k for k in _organ_lesions(terms, tags) if k not in terms)
    if not terms and not elsewhere and tags == {"MR"} and family in ("presence", "count", "size", "side", "volume", "likelihood"):
        terms = ("tumor",)  # a brain MRI's finding is its tumour: "Which hemisphere?"
    form = "either_or" if either else ("yes_no" if _is_yes_no(core, q, asked) else ("wh" if _WH.search(q) else "command"))
    if family in ("side",) and form == "yes_no" and side:
        family = "presence"  # "Is the cyst on the left?": presence on that side, answered with the sides found
    # "is the cyst on the left or right?" and "small, medium or large?" read the slice on screen (the convention the
    # model was trained on); a field of the slice that does not resolve falls back to the whole study's (``answer_keys``)
    scope = "slice" if _on_screen(q) or asks_about_shown_slice(clause) else "study"
    # "anything abnormal?": yes means abnormal; "nothing abnormal?", "free of disease?": yes means normal
    asks_normal = not re.search(_ABNORMAL, q) or bool(re.search(rf"\b(?:nothing|no|not|without|free of|absence of)\b(?:\s+\w+){{0,2}}?\s*(?:{_ABNORMAL})", q))
    options = tuple(either) if either else ()
    asks_count = bool(re.search(r"\bhow many\b|\bnumber of\b|\bcount\b", q))
    return QuestionIntent(clause, family=family, form=form, terms=terms, side=side, options=options, scope=scope,
                          negated=negated, asks_normal=asks_normal, asks_count=asks_count, elsewhere=elsewhere)


# the words the family cues below are made of: a word one typo from one of them (and not a word in its own right) is read
# as it ("biger" → "bigger", "volme" → "volume", "sise" → "size")
_CUE_WORDS = ("bigger", "larger", "smaller", "greater", "compare", "comparison", "versus", "symmetric", "asymmetric",
              "volume", "size", "sized", "diameter", "dimension", "dimensions", "measure", "measurement", "normal",
              "abnormal", "unremarkable", "healthy", "pathology", "count", "number", "multiple", "solitary", "several",
              "laterality", "lateral", "hemisphere", "which", "where", "located", "location", "phase", "contrast",
              "enhanced", "unenhanced", "arterial", "venous", "portal", "delayed", "report", "impression", "summarise",
              "summarize", "segment", "segmentation", "contour", "outline", "likely", "likelihood", "probability",
              "chance", "present", "visible", "modality", "series", "sequence", "sequences", "bilateral", "unilateral")
# words one typo from a cue word that are words in their own right, never corrected ("side" is not "size")
_REAL_WORDS = frozenset(("side", "sides", "were", "here", "there", "these", "those", "when", "then", "than", "whose", "whole",
                         "while", "white", "mass", "case", "base", "bases", "phrase", "phased", "report", "sure", "more",
                         "core", "hole", "home", "some", "same", "seen", "size", "sizes", "seize", "later", "latter", "letter",
                         "ladder", "number", "lumber", "counter", "county", "court", "mount", "amount", "normally", "formal",
                         "visibly", "presence", "presented", "summary", "series", "serial", "measured", "measures",
                         "venus", "venue", "larger", "large", "bigger", "count", "counts", "compared", "contrasts",
                         "delay", "enhance", "enhancing", "located", "locate", "portals", "arteries", "artery", "veins"))


# common slips of short question words, too short for a one-typo match ("hwo many", "waht is")
_SHORT_TYPOS = {"sde": "side", "sdie": "side", "sied": "side", "hwo": "how", "hoe": "how", "waht": "what", "whta": "what", "wht": "what", "wat": "what", "whats": "what's",
                "wich": "which", "whcih": "which", "whihc": "which", "teh": "the", "hte": "the", "si": "is", "adn": "and",
                "nad": "and", "fo": "of", "cna": "can", "ther": "there", "tehre": "there", "thier": "their", "eny": "any"}


def _corrected(q: str) -> str:
    """``q`` with each word one typo from exactly one cue word read as it (lexicon terms are matched typo-tolerant
    by ``find_terms`` already; this reads the words that say what is asked)."""
    words = [_SHORT_TYPOS.get(w, w) for w in q.split(" ")]
    for i, word in enumerate(words):
        if len(word) < 4 or word in _CUE_WORDS or word in _REAL_WORDS or not word.isalpha():
            continue
        close = [c for c in _CUE_WORDS if one_typo(word, c, min_length=4)]
        if len(close) == 1:
            words[i] = close[0]
    return " ".join(words)


_ABNORMAL = r"\babnormal|\bpatholog|\bwrong\b|\bconcerning\b|\bsuspicious\b|\bworrying\b"

_WHICH_PART = re.compile(r"\b(?:lobe|lobes|zone|zones|organ|gyrus|territory)\b")

# the cue words of the families read from a question's wording, in order of precedence
_FAMILY_CUES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((family, re.compile(pattern)) for family, pattern in (
    ("normality", r"\bnormal\b|\bunremarkable\b|\bhealthy\b|\bwnl\b|\bwithin normal limits\b|\babnormal|\bpatholog|\bclear\b|"
                  r"\bclean\b|\bok(?:ay)?\b|\bfine\b|\bnegative (?:study|film|scan|exam)\b|\banything wrong\b|\bconcerning\b|"
                  r"\bsignificant\b|\bnothing (?:wrong|acute|abnormal|concerning|suspicious)\b|\bno acute\b|\bfree of\b|\bnegative\b|"
                  r"\bclear of\b"),
    ("likelihood", r"\bhow (?:likely|probable|sure|confident|certain)\b|\bprobabilit|\blikelihood\b|\bchance\b|\bodds\b|"
                   r"\bconfidence\b|\bpercent|%|\bscore\b|\bp\(|\blikely\b"),
    ("count", r"\bhow many\b|\bnumber of\b|\bcount\b|#|\bhow much (?:lesions|nodules|cysts)\b|\bsingle or multiple\b|"
              r"\bmultiple\b|\bmultifocal\b|\bsolitary\b|\bmore than one\b|\bseveral\b|\bnumerous\b|\bquantity of\b"),
    ("side", r"\bwhich side\b|\bwhat side\b|\blateral|\bwhich (?:lung|kidney|hemisphere|half)\b|\bwhere\b|\blocat|\bsided?\b|"
             r"\bhemisphere\b|\bleft or right\b|\bright or left\b|\bl or r\b|\br or l\b|\bl/r\b|\br/l\b|\bunilateral|\bbilateral"),
    ("volume", r"\bvolume|\bvol\b|\bhow much\b|\bml\b|\bcc\b|\blit(?:er|re)s?\b|\bcapacity\b|\bburden\b|"
               r"(?<!max )(?<!maximum )(?<!greatest )(?<!largest )\bextent\b|"
               r"\bhow big is the (?:whole )?(?:tumor|mass|lesion) overall\b"),
    ("size", r"\bhow (?:big|large|small|wide|long)\b|\b(?:max|maximum|maximal|greatest|largest) (?:extent|length|width)\b|\bsize|\bdiameter|\bdimension|\bmeasure|\bmm\b|\bcm\b|\bsized\b|"
             r"\bsmall,? medium or large\b|\bmagnitude\b"),
))


def _family(q: str, core: str, terms: tuple[str, ...], tags: set[str], either: list[str]) -> str:
    organs = [t for t in terms if TERMS[t].kind == "organ"]
    lesions = [t for t in terms if TERMS[t].kind != "organ" and TERMS[t].kind != "phase"]
    if re.search(r"\bmodalit|\b(?:what|which) (?:kind|type|sort) of (?:\w+ )?(?:scan|study|imaging|image|exam|examination|test|"
                 r"picture|acquisition)|\bscan type\b|\btype of (?:scan|study|imaging|exam)\b|\bwhat am i looking at\b|"
                 r"\bwhat is this (?:scan|image|study|exam)\b|\bimaging (?:technique|method)\b|\bis (?:this|it) (?:an? )?(?:chest |head |brain |abdominal |body )?"
                 r"(?:ct|mri?|x-?ray|radiograph|cxr|mr)(?: (?:scan|study|exam|image|film))?\s*(?:\?|$|\bor\b)|\b(?:ct|mri?|x-?ray)(?: scan)? or (?:an? )?(?:ct|mri?|x-?ray)\b|"
                 r"\bwhich (?:scanner|imaging)|\bimaging type\b|\bacquired on\b", q) and not lesions:
        return "modality"
    if re.search(r"\bseries\b|\bsequences?\b|\bacquisitions?\b|\bhow many (?:images|stacks|scans)\b|\bwhat (?:images|scans) "
                 r"(?:are|were|do)\b|\bwhich (?:images|scans) (?:are|were|do)\b|\bweighting", q) and not lesions:
        return "series"
    if re.search(r"\breport\b|\bimpression\b|\bsummar|\bdescribe (?:the|this|these|what)|\bread (?:the|this) (?:study|scan|film)|"
                 r"\bwrite[- ]?up\b|\bwrite (?:this|it|that|the (?:study|scan|film|case)) up\b|\bdictat|\boverall findings\b|\bfindings\?|^findings\b|\bwhat (?:do|can) you see\b|"
                 r"\bwhat(?:'s| is) (?:seen|shown|visible)\b|\bprelim", q) and not re.search(r"\bhow many|\bvolume\b|\bsize\b", q):
        return "report"
    if re.search(r"\b(?:run|use|apply|start|launch|call|execute|fire up|try)\b.*\b(?:model|expert|classifier|segment\w*|"
                 r"tool|algorithm|network|ai|detector|analysis|pipeline)\b", q) or re.search(r"\b(?:classify|run)\b.*\b(?:film|"
                 r"x-?ray|radiograph|cxr|study|scan|image)\b", q) or (re.match(r"^(?:run|use|apply|launch|execute)\b", core) and not terms):
        return "run_expert"
    if re.search(r"\bsegment|\bcontour|\bdelineat|\blabel (?:all|every|the)|\boutline|\bmask", q) and (
            not terms or "MR" in tags or re.search(r"\b(?:all|every|everything|whole|each|full|organs|entire|complete)\b", q)):
        return "segment_all"
    if "contrast phase" in terms or re.search(r"\bphase\b|\bcontrast (?:timing|bolus)\b|\bbolus\b|\btiming of (?:the )?(?:contrast|injection|scan)\b|\b(?:with|without|post|pre)[- ]contrast\b|"
                                              r"\benhanced\b|\bunenhanced\b|\bcontrast (?:study|scan|given)\b", q) or \
            (either and all(o in _PHASES for o in either)):
        return "phase"
    threshold = re.search(r"\b(?:bigger|larger|smaller|greater|more|less|over|under|above|below) (?:than )?\d+(?:\.\d+)?\s*(mm|cm|ml|cc|l)\b", q)
    if threshold:  # "is the nodule bigger than 1 cm?": its size (or volume) against the number
        return "size" if threshold.group(1) in ("mm", "cm") and lesions else "volume"
    paired = [t for t in organs if t in ("kidneys", "lungs") or TERMS[t].paired]
    measured = [t for t in terms if TERMS[t].kind != "phase"]
    if re.search(r"\b(?:bigger|larger|smaller|greater|compare|comparison|versus|vs\.?|asymmetr|symmetric|difference|"
                 r"more volume|less volume)\b", q) and (paired or len(measured) >= 2 or re.search(r"\bkidney|\blung", q)) or (
            len(measured) >= 2 and re.search(r"\b(?:more|less)\b", q) and re.search(r"\b(?:or|than|vs)\b", q)):
        return "comparison"
    if _WHICH_PART.search(q) and re.search(r"\b(?:which|what|where)\b", q) and not either:
        return "other"  # "which lobe is it in?", "in which organ?": a place no result field gives, left to the model
    for family, cue in _FAMILY_CUES:  # first cue wins: "Is the heart size normal?" asks about normality, not size
        if cue.search(q):
            return "volume" if family == "size" and organs and not lesions else family
    if organs and not lesions and re.search(r"\b(?:enlarged|big|large|swollen|shrunken|small|atrophic|increased in size)\b", q):
        return "volume"  # "Is the spleen enlarged?": its volume
    if re.search(r"\bon the (?:left|right)\b|\b(?:left|right)[- ]sided\b", q) and not organs:
        return "side"  # "is it on the left?" (a yes / no about one side is read as presence on that side below)
    if lesions or any(TERMS[t].kind == "finding" for t in terms):
        return "presence"
    if organs and re.search(r"\b(?:see|seen|visible|shown|present|there|depicted|included|appear)\b", q):
        return "presence"
    return "other"


def _terms(clause: str, tags: set[str], declared: tuple[Term, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lexicon keys and experts' declared terms the clause names, narrowed to the study's modalities; a paired organ
    named with a side) and (those it names that only another modality's experts report)."""
    own = {t.key: t for t in declared}
    matches = find_terms(_both_sides(clause), extra=declared)
    keys: list[str] = []
    elsewhere: list[str] = []
    for m in matches:
        term = TERMS.get(m.key) or own[m.key]
        if tags and term.modality and term.modality not in tags:
            alt = _same_name_for(m.name, tags)
            if alt is None and "CR" in tags and not re.search(r"\bvolume|\bml\b|\bcc\b|\blit(?:er|re)s?\b", clause.lower()):
                alt = _RADIOGRAPH_READS.get(term.key)  # a volume is not read from a radiograph: that stays a CT's
            if alt is None:
                # named by a name of one modality's term only ("liver", not "tumor"), no word of which the study's own terms
                # use ("heart" of a chest film: "enlarged heart"; "lesions" of a CT: "liver lesion"), and not the contrast phase
                if term.kind != "phase" and term.key not in elsewhere and _foreign(m.name, tags, own):
                    elsewhere.append(term.key)
                continue
            term = TERMS[alt]
        if term.key not in keys:
            keys.append(term.key)
    mine = tuple(k for k in keys if k in own)  # the rules below read the lexicon's terms; an expert's own are kept as named
    keys = [k for k in keys if k not in own]
    # "liver ... focal lesions", "masses in the kidney": a generic lesion word beside an organ names that organ's lesion type
    if _GENERIC_LESION.search(normalise_text(clause)):
        for k in [k for k in keys if TERMS[k].kind == "organ"]:
            organ = (TERMS[k].organ or k).rstrip("s")
            lesion = next((t.key for t in TERMS.values() if t.kind == "lesion" and t.organ.rstrip("s") == organ
                           and (not tags or t.modality in tags)), None)
            if lesion and lesion not in keys:
                keys.append(lesion)
    # "a cyst in the left kidney", "hepatic mets": an organ named as a lesion's place is where to look, not what to measure
    places = {TERMS[k].organ.rstrip("s") for k in keys if TERMS[k].kind == "lesion"}
    return tuple(k for k in keys if not (TERMS[k].kind == "organ" and (TERMS[k].organ or k).rstrip("s") in places)) + mine, tuple(elsewhere)


def _both_sides(clause: str) -> str:
    """``clause`` with a side pair before one organ named for each side ("left vs right kidney" → "left kidney vs right
    kidney"), so both paired structures are read."""
    return re.sub(r"\b(left|right)\s+(vs\.?|versus|v|and|or|/|compared (?:to|with))\s+(?:the\s+)?(right|left)\s+"
                  r"(kidney|lung|adrenal|hemisphere)s?\b", r"\1 \4 \2 \3 \4", clause, flags=re.IGNORECASE)


def _organ_lesions(terms: tuple[str, ...], tags: set[str]) -> list[str]:
    """The lexicon's lesion types of the organs among ``terms`` ("kidneys" → "kidney cyst"), of the study's modalities."""
    out = []
    for k in (k for k in terms if k in TERMS and TERMS[k].kind == "organ"):
        organ = (TERMS[k].organ or k).rstrip("s")
        out += [t.key for t in TERMS.values() if t.kind == "lesion" and t.organ.rstrip("s") == organ and (not tags or t.modality in tags)]
    return list(dict.fromkeys(out))


# a structure a chest radiograph shows only through one finding: its heart is read as the heart's size ("heart normal?")
_RADIOGRAPH_READS = {"heart": "cardiomegaly"}

_GENERIC_LESION = re.compile(r"\b(?:lesions?|mass(?:es)?|tumou?rs?|growths?|spots?|focal|abnormalit(?:y|ies)|foci|focus|"
                             r"nodules?|nodular|cysts?|cystic|metastas[ie]s|mets)\b")


def _foreign(name: str, tags: set[str], declared: Mapping[str, Term]) -> bool:
    """Whether ``name`` names only another modality's term: the terms going by it are of one modality, and no term of
    the study's modalities (``tags``) uses one of its words but the generic lesion words."""
    terms = [*TERMS.values(), *declared.values()]
    if len({t.modality for t in terms if name in t.names}) > 1:
        return False
    words = {w.rstrip("s") for w in words_of(name) if not _GENERIC_LESION.fullmatch(w)} - {
        "left", "right", "both", "the", "of", "in", "on", "lt", "rt", "l", "r"}  # "lesion", "mass": any modality's words
    return bool(words) and not any(words & {w.rstrip("s") for w in words_of(n)} for t in terms if t.modality in tags for n in t.names)


def _same_name_for(name: str, tags: set[str]) -> str | None:
    """The term of the study's modality that goes by ``name`` too ("nodule" on a radiograph, "mass" on a brain MRI)."""
    for key, term in TERMS.items():
        if term.modality in tags and name in term.names:
            return key
    return None


def _named_side(q: str) -> str:
    sides = {s for s, pattern in _SIDE_WORD.items() if re.search(rf"(?:{pattern})", q)}
    if re.search(r"\bleft or right\b|\bright or left\b|\bl or r\b|\br or l\b|\bwhich side\b|\bboth\b|\bbilateral", q):
        return ""
    return sides.pop() if len(sides) == 1 else ""


def _either_or(q: str) -> list[str]:
    """The options of an either-or question: two sides or two phases joined by "or"."""
    organ = r"(?: (?:kidney|lung|side|lobe|hemisphere|one|half|breast|adrenal|ovary))?"  # "left kidney or right kidney"
    if re.search(rf"\b(?:left|lt|l){organ} or (?:the )?(?:right|rt|r)\b|\b(?:right|rt|r){organ} or (?:the )?(?:left|lt|l)\b|\bl/r\b|\br/l\b", q):
        return ["left", "right"]
    found = [p for p, pattern in _PHASES.items() if re.search(rf"\b(?:{pattern})", q)]
    if len(found) >= 2 and " or " in q:
        return found
    return []


def _is_yes_no(core: str, q: str, asked: bool) -> bool:
    if re.search(r"\byes or no\b|\bpresent or absent\b|\by/n\b", q):
        return True
    if re.search(r"\b(?:small|medium|large|mild|moderate|severe|tiny|big)\b(?: \w+)? or (?:\w+ )?(?:small|medium|large|mild|"
                 r"moderate|severe|tiny|big)\b|\b(?:ct|mri?|x-?ray|radiograph)(?: scan)? or (?:an? )?(?:ct|mri?|x-?ray|radiograph)\b", q):
        return False  # a choice among options ("small, medium or large?", "a CT or an MRI?") is not yes / no
    if _WH.match(core):
        return False
    if _YES_NO_START.match(core):
        return True
    # a fragment ending in "?" without a wh-word ("PTX?", "liver lesion?")
    return asked and not _WH.search(core) and len(core.split()) <= 6


def _on_screen(q: str) -> bool:
    return bool(re.search(r"\b(?:this|current|present|displayed|shown|visible|that) (?:slice|section|cut|level|image|frame|view|axial)\b|"
                          r"\b(?:slice|image|section) (?:on screen|shown|displayed)\b|"
                          r"\bon (?:the )?screen\b|\bin view\b|\bon this (?:image|slice)\b|\bhere\b", q))


def _clauses(text: str) -> list[str]:
    """A multi-part question's clauses: split at "?" / ";" and at "and" / "also" / "plus" before a new question."""
    pieces = [p.strip() for p in re.split(r"(?<=\?)\s+(?=\S)|;\s*", text) if p.strip()]
    out: list[str] = []
    for piece in pieces:
        out += [p.strip(" ,") for p in re.split(
            r",?\s+(?:and|also|plus|&|then)\s+(?=(?:how|what|which|where|is|are|does|do|its|it's|their|give|tell|measure|"
            r"report|count|also|whether|if (?:so|yes|present|there is|there are|any))\b)|,\s+(?=(?:how|what|which|where)\b)", piece, flags=re.IGNORECASE) if p.strip(" ,")]
    return out or [text]


_MEASURES = r"size|sizes|number|count|volume|volumes|side|sides|location|position|diameter|laterality"


def _family_split(clause: str, tags: set[str], declared: tuple[Term, ...]) -> list[str]:
    """A clause joining two questions of different kinds by "and the" ("the contrast phase and the liver volume"), as
    its two questions; two measures asked of one subject ("size and number of the nodules") likewise; otherwise the
    clause."""
    pair = re.search(rf"\b({_MEASURES})\s+(?:and|&|\+|/)\s+(?:the\s+)?(?:(?:largest|biggest|max(?:imum)?|greatest)\s+)?({_MEASURES})\b",
                     clause, flags=re.IGNORECASE)
    if pair:
        one, two = (clause[:pair.start()] + pair.group(k) + clause[pair.end():] for k in (1, 2))
        a, b = _parse_clause(one, tags, clause, declared), _parse_clause(two, tags, clause, declared)
        if "other" not in (a.family, b.family) and a.family != b.family:
            return [one, two]
    for m in re.finditer(r",?\s+and\s+(?=(?:the|its|their)\b)", clause, flags=re.IGNORECASE):
        left, right = clause[:m.start()], clause[m.end():]
        a, b = _parse_clause(left, tags, clause, declared), _parse_clause(right, tags, clause, declared)
        if "other" not in (a.family, b.family) and a.family != b.family and a.terms and b.terms:
            return [left, right]
    return [clause]


def _readers(modalities: Sequence[str], experts: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    have = set(modalities)
    return tuple(n for n, mods in experts.items() if not mods or have & set(mods))
