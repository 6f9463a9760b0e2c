"""Questions asked the way clinicians ask them, composed for the training data: ``draw_question``.

A question is composed, seeded, from an intent's frame (``question_frames.FRAMES``), a lexicon name of the structure or
finding (``data.lexicon.TERMS``: synonyms, abbreviations, eponyms, lay terms) and noise (``question_noise``); two intents
may be joined into one multi-part question. ``data.instructions.clinician_dialogues`` answers it with the expert.

A frame asking about the slice on screen (or about the whole study) is kept only when the agent reads the composed
question so (``asks_about_shown_slice``), so the tool message at inference holds what the answer names.

Decontamination: a composed question is drawn again when, normalised (lower case, punctuation to spaces), its text,
one of its sentences, or any run of ``SPAN_WORDS`` or more of its words has its SHA-256 in ``EXCLUDED_QUESTIONS``.
That file lists the hashes of the frozen held-out evaluation phrasings and nothing else: the generator never sees
their words; no held-out phrasing is trained on verbatim, and none of four words or more inside a longer question
("so <phrasing> thanks"). Shorter ones (a finding's name alone) are kept out only as whole questions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.instructions.paraphrase import expand
from data.instructions.question_frames import (EXPERT_NAMES, FRAMES, PHASE_NAMES, SCOPES, SIDE_ORGAN, STUDY_NAMES, ClinicianQuestionError,
                                               display, modifier_names, noun_names, normal_subjects, pick_name, plural, with_determiner)
from data.instructions.question_noise import NoiseConfig, add_noise
from data.lexicon import TERMS
from data.phantoms.labels import CXR_FINDINGS
from data.slice_facts import asks_about_shown_slice

__all__ = ["ClinicianQuestionError", "ClinicianMix", "Part", "Ask", "FAMILIES", "EXCLUDED_QUESTIONS", "CT_LESION_KEYS", "CT_ORGAN_KEYS",
           "PAIRED_ORGANS", "SPAN_WORDS", "draw_question", "sample_questions", "normalised_question", "question_hash"]

EXCLUDED_QUESTIONS = Path(__file__).with_name("excluded_questions.txt")
SPAN_WORDS = 4  # held-out phrasings this long are kept out of longer questions too

# intent families (what a test or a report counts) → the frame groups that ask them
FAMILIES: dict[str, tuple[str, ...]] = {
    "presence": ("presence",), "presence (slice)": ("presence_slice",), "count": ("count",), "size": ("size", "size_slice"),
    "side (study)": ("side",), "side (slice)": ("side_slice",), "organ volume": ("volume",), "tumour volume": ("tumor_volume",),
    "contrast phase": ("phase", "contrast"), "comparison": ("comparison",),
    "normality": ("normal", "normal_study", "abnormal", "abnormal_study"),
    "either-or": ("either_side", "either_phase", "either_size", "either_larger", "either_findings"), "likelihood": ("likelihood",),
    "negation": ("negation",), "report": ("report",), "run expert": ("run_expert",),
    "segment everything": ("segment_everything", "segment_organs", "segment_lesions", "segment_tumor"), "multi-part": (),
}
_FAMILY_OF = {intent: fam for fam, intents in FAMILIES.items() for intent in intents}

# the lexicon keys questions name, by study kind
CT_LESION_KEYS = ("liver tumor", "lung nodule", "kidney cyst")
CT_ORGAN_KEYS = ("liver", "spleen", "left kidney", "right kidney", "kidneys", "left lung", "right lung", "lungs", "heart", "aorta", "spine")
PAIRED_ORGANS = {"kidneys": "kidney", "lungs": "lung"}  # a pair's key → the noun of one of them
_MRI_FINDING_KEYS = ("tumor", "enhancing tumor", "necrotic core", "edema")
_MRI_VOLUME_KEYS = ("tumor", "tumor core", "enhancing tumor", "necrotic core", "edema")
_CT_LESIONS, _CT_ORGANS, _PAIRS = CT_LESION_KEYS, CT_ORGAN_KEYS, PAIRED_ORGANS
# per study kind: intent → the lexicon keys it asks about (() for intents about the study as a whole)
_INTENT_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "ct": {**{i: _CT_LESIONS for i in ("presence", "presence_slice", "count", "size", "size_slice", "side", "side_slice", "tumor_volume",
                                       "likelihood", "negation", "either_side", "either_size", "normal", "abnormal")},
           "volume": _CT_ORGANS, "comparison": ("kidneys", "lungs"), "either_larger": ("kidneys", "lungs"),
           **{i: () for i in ("phase", "contrast", "either_phase", "normal_study", "abnormal_study", "report", "run_expert",
                              "segment_everything", "segment_organs", "segment_lesions")}},
    "mri": {**{i: _MRI_FINDING_KEYS for i in ("presence", "likelihood", "negation")},
            **{i: ("tumor",) for i in ("presence_slice", "size", "size_slice", "side", "side_slice", "either_side", "either_size", "normal",
                                       "abnormal")},
            "tumor_volume": _MRI_VOLUME_KEYS, **{i: () for i in ("normal_study", "abnormal_study", "report", "run_expert", "segment_tumor")}},
    "cxr": {**{i: CXR_FINDINGS for i in ("presence", "likelihood", "negation", "either_findings")},
            **{i: ("cardiomegaly", "pleural effusion") for i in ("normal", "abnormal")},
            **{i: () for i in ("normal_study", "abnormal_study", "report", "run_expert")}},
}
_MULTI = {"ct": ("presence", "count", "size", "side", "volume", "tumor_volume", "phase", "contrast", "comparison", "normal", "likelihood",
                 "negation"),
          "mri": ("presence", "size", "side", "tumor_volume", "normal", "likelihood", "negation"),
          "cxr": ("presence", "normal", "abnormal", "likelihood", "negation")}
_STYLE_WEIGHTS = {"question": 0.4, "terse": 0.15, "fragment": 0.25, "shorthand": 0.2}
# families drawn half as often: long answers, few ways to ask (every other family weighs 1)
_FAMILY_WEIGHTS = {"report": 0.5, "run expert": 0.5, "segment everything": 0.5}
_JOINS = ("sentences", "and", "comma", "plus", "semicolon", "also")
_SLOT = re.compile(r"<(a x|a y|the o|side organ|this study|[a-z0-9]+)>")


@dataclass(frozen=True)
class ClinicianMix:
    """How many clinician-style conversations join each case's expert conversation in the ``medical-ift`` file, and how
    they are written. ``per_case`` 0 leaves the file as the template generators wrote it; the template conversations are
    then ``1 / (1 + per_case)`` of that file (the ``ift`` file stays all template questions). ``splits``: the splits that
    get them (the test split keeps the template questions, so its figures stay comparable across versions)."""

    per_case: int = 4
    splits: tuple[str, ...] = ("train",)
    multi_part: float = 0.12  # share of questions that join two intents
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    # A call naming several CT structures lists them (["liver", "liver tumor"]) when True, else names the group covering
    # them ("organs", "lesions", "everything"): vlm.train.build.add_organ_conversations reads targets as one string.
    target_lists: bool = False
    decontaminate: bool = True  # draw again a question whose normalised text hashes into EXCLUDED_QUESTIONS

    def __post_init__(self) -> None:
        if not 0 <= self.per_case <= 64:
            raise ClinicianQuestionError(f"ClinicianMix.per_case must be 0..64 conversations per case, got {self.per_case}.")
        if not 0.0 <= self.multi_part <= 1.0:
            raise ClinicianQuestionError(f"ClinicianMix.multi_part must be a share in [0, 1], got {self.multi_part}.")


@dataclass(frozen=True)
class Part:
    """One thing a question asks: the frame group ``intent``, the lexicon ``key`` (or "") and its options
    (``second``: the other finding of an either-or; ``phases``: the phases offered; ``smaller``: a comparison asks
    which is smaller)."""

    intent: str
    key: str = ""
    second: str = ""
    phases: tuple[str, ...] = ()
    smaller: bool = False

    @property
    def family(self) -> str:
        return _FAMILY_OF[self.intent]


@dataclass(frozen=True)
class Ask:
    """A composed question: its text, what it asks (one part, two for a multi-part question) and its style
    ("fragment+lower+typo")."""

    text: str
    kind: str
    parts: tuple[Part, ...]
    style: str

    @property
    def family(self) -> str:
        return "multi-part" if len(self.parts) > 1 else self.parts[0].family


def draw_question(kind: str, rng: np.random.Generator, *, present: tuple[str, ...] = (), in_slice: tuple[str, ...] = (),
                  mix: ClinicianMix = ClinicianMix(), intent: str | None = None) -> Ask:
    """A question about a ``kind`` study ("ct", "mri", "cxr"). present / in_slice: the lexicon keys present in the study /
    on the slice shown; half the presence-type questions ask about one of them, so yes and no answers balance.
    intent: one frame group (e.g. "negation"), or "multi" for a two-part question; default drawn."""
    if kind not in _INTENT_KEYS:
        raise ValueError(f"kind must be one of {tuple(_INTENT_KEYS)}, got {kind!r}.")
    for _ in range(40):  # a frame the agent would read at the wrong scope is drawn again
        chosen = intent or ("multi" if rng.random() < mix.multi_part else _draw_intent(kind, rng))
        if chosen == "multi":
            ask = _multi(kind, rng, present, mix)
        else:
            part = _draw_part(kind, chosen, rng, present, in_slice)
            text, style = _compose(kind, part, rng)
            part = _polarity(part, text)
            text, noise = add_noise(text, rng, mix.noise)
            ask = Ask(text, kind, (part,), "+".join([style, *noise]))
        if _scope_ok(ask) and not (mix.decontaminate and _excluded(ask.text)):
            return ask
    raise ClinicianQuestionError(f"clinician questions for a {kind} study: a {intent or 'drawn'} question must read at its frames' scope "
                                 "and be off the decontamination list, but 40 draws in a row did not; check question_frames.FRAMES "
                                 "for that intent.")


def sample_questions(n: int, seed: int = 0, mix: ClinicianMix = ClinicianMix()) -> list[Ask]:
    """``n`` questions over the three study kinds without a case (what the language covers, for counting and for the
    leakage check), seeded."""
    rng = np.random.default_rng([seed, 0xC11])
    kinds = tuple(_INTENT_KEYS)
    return [draw_question(kinds[i % 3], rng, mix=mix) for i in range(n)]


def normalised_question(text: str) -> str:
    """Lower case, punctuation and underscores to spaces, the image placeholder dropped, one space between words."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.replace("<image>", " ").lower()).split())


def question_hash(text: str) -> str:
    """SHA-256 (hex) of ``normalised_question(text)``: how ``EXCLUDED_QUESTIONS`` lists a question."""
    return hashlib.sha256(normalised_question(text).encode("utf-8")).hexdigest()


def _excluded(text: str) -> bool:
    """Whether the question, one of its lines or sentences, or a run of ``SPAN_WORDS`` or more of its words is listed
    in ``EXCLUDED_QUESTIONS``."""
    excluded = _excluded_hashes()
    pieces = {text, *text.splitlines(), *re.split(r"(?<=[.?!])\s+|\n", text)}
    if any(question_hash(p) in excluded for p in pieces if p.strip()):
        return True
    words = normalised_question(text).split()
    spans = (" ".join(words[i:j]) for i in range(len(words)) for j in range(i + SPAN_WORDS, len(words) + 1))
    return any(hashlib.sha256(span.encode("utf-8")).hexdigest() in excluded for span in spans)


@lru_cache(maxsize=1)
def _excluded_hashes() -> frozenset[str]:
    if not EXCLUDED_QUESTIONS.is_file():
        raise ClinicianQuestionError(f"clinician questions: the decontamination list {EXCLUDED_QUESTIONS} must exist (SHA-256 of the "
                                     "held-out evaluation phrasings), but it is missing; restore it from the repository, or build "
                                     "with ClinicianMix(decontaminate=False) where held-out phrasings may appear in the data.")
    return frozenset(line.split()[0] for line in EXCLUDED_QUESTIONS.read_text().splitlines() if line.strip() and not line.startswith("#"))


# ---- composing the text


def _draw_intent(kind: str, rng: np.random.Generator) -> str:
    """An intent family among those the study kind has (``_FAMILY_WEIGHTS``), then one of its frame groups."""
    fams, cumulative = _families(kind)
    fam = fams[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(fams) - 1)]
    groups = [i for i in FAMILIES[fam] if i in _INTENT_KEYS[kind]]
    return groups[int(rng.integers(len(groups)))]


@lru_cache(maxsize=None)
def _families(kind: str) -> tuple[tuple[str, ...], np.ndarray]:
    fams = tuple(f for f, intents in FAMILIES.items() if any(i in _INTENT_KEYS[kind] for i in intents))
    return fams, np.cumsum([_FAMILY_WEIGHTS.get(f, 1.0) for f in fams])


def _draw_part(kind: str, intent: str, rng: np.random.Generator, present: tuple[str, ...], in_slice: tuple[str, ...]) -> Part:
    keys = _INTENT_KEYS[kind].get(intent)
    if keys is None:
        raise ValueError(f"intent {intent!r} is not asked of a {kind} study; choose among {sorted(_INTENT_KEYS[kind])}.")
    if not keys:
        phases = tuple(rng.choice(list(PHASE_NAMES), 2, replace=False)) if intent in ("phase", "either_phase") else ()
        return Part(intent, "", phases=phases)
    pool = in_slice if intent.endswith("_slice") else present
    hits = [k for k in keys if k in pool]
    misses = [k for k in keys if k not in pool]
    pick = hits if hits and (rng.random() < 0.5 or not misses) else misses
    key = pick[int(rng.integers(len(pick)))]
    second = ""
    if intent == "either_findings":
        others = [k for k in keys if k != key]
        second = others[int(rng.integers(len(others)))]
    return Part(intent, key, second)


def _compose(kind: str, part: Part, rng: np.random.Generator, styles: tuple[str, ...] | None = None) -> tuple[str, str]:
    """(text, style) of one part, before noise."""
    frames = FRAMES[part.intent]
    options = [s for s in (styles or tuple(frames)) if s in frames] or list(frames)
    cumulative = np.cumsum([_STYLE_WEIGHTS[s] for s in options])
    style = options[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(options) - 1)]
    usable = [f for f in frames[style] if "<side organ>" not in f or part.key in SIDE_ORGAN]
    frame = _expand(usable[int(rng.integers(len(usable)))], rng)
    slots = _slots(kind, part, rng)
    text = _SLOT.sub(lambda m: slots[m.group(1)], frame)
    return (text[:1].upper() + text[1:] if style in ("question", "terse") else text), style


def _slots(kind: str, part: Part, rng: np.random.Generator) -> dict[str, str]:
    study = display(STUDY_NAMES[kind][int(rng.integers(len(STUDY_NAMES[kind])))])
    slots = {"study": study, "this study": ("this " if rng.random() < 0.6 else "the ") + study,
             "expert": EXPERT_NAMES[kind][int(rng.integers(len(EXPERT_NAMES[kind])))]}
    key = part.key
    if key:
        x = pick_name(noun_names(key), rng, key)
        slots |= {"x": x, "xs": plural(x), "a x": with_determiner(x, rng)}
        if key in SIDE_ORGAN:
            slots["side organ"] = SIDE_ORGAN[key][0]
        subjects = normal_subjects(key)
        if subjects:
            slots["s"] = subjects[int(rng.integers(len(subjects)))]
        if key in TERMS and TERMS[key].kind == "organ":
            slots["o"] = pick_name(modifier_names(key), rng, key)
            noun = pick_name(noun_names(key), rng, key)
            slots["the o"] = noun if noun.startswith("both ") else "the " + noun
        if key in _PAIRS:
            p = _PAIRS[key]
            slots |= {"pair": p, "pairs": p + "s", "left": pick_name(noun_names(f"left {p}"), rng, f"left {p}"),
                      "right": pick_name(noun_names(f"right {p}"), rng, f"right {p}")}
    if part.second:
        y = pick_name(noun_names(part.second), rng, part.second)
        slots |= {"y": y, "a y": with_determiner(y, rng)}
    if kind == "ct":
        phases = part.phases or tuple(rng.choice(list(PHASE_NAMES), 2, replace=False))
        p1, p2 = (PHASE_NAMES[p][int(rng.integers(len(PHASE_NAMES[p])))] for p in phases)
        slots |= {"p1": p1, "p2": p2}
    slots["s"] = slots.get("s") or study
    return _Slots(slots)


def _expand(template: str, rng: np.random.Generator) -> str:
    """``paraphrase.expand`` keeping a question mark that opens a word ("?pneumothorax", "<x> ?L ?R")."""
    text = expand(template.replace(" ?", " \x00"), rng).replace("\x00", "?")
    return text


class _Slots(dict):
    """Slot values; "<a p1>" and other determiner slots are built on demand ("an arterial")."""

    def __missing__(self, name: str) -> str:
        if name.startswith("a "):
            value = self[name[2:]]
            return ("an " if value[:1].lower() in "aeiou" else "a ") + value
        raise KeyError(f"question frame slot <{name}> has no value for this part; frames may use {sorted(self)}.")


def _multi(kind: str, rng: np.random.Generator, present: tuple[str, ...], mix: ClinicianMix) -> Ask:
    """Two intents joined into one question ("Liver volume and any mets?")."""
    intents = rng.choice(list(_MULTI[kind]), 2, replace=False)
    parts = [_draw_part(kind, str(i), rng, present, ()) for i in intents]
    join = _JOINS[int(rng.integers(len(_JOINS)))]
    tight = join in ("and", "comma", "plus", "semicolon")
    texts = [_compose(kind, p, rng, ("fragment", "shorthand", "question") if tight else None)[0] for p in parts]
    parts = [_polarity(p, t) for p, t in zip(parts, texts)]
    first, second = texts
    if join == "sentences":
        text = first + ("" if first.endswith(("?", ".")) else "?") + " " + second
    elif join == "also":
        text = first + ("" if first.endswith(("?", ".")) else "?") + " Also, " + _lower_first(second)
    else:
        sep = {"and": " and ", "comma": ", ", "plus": " + ", "semicolon": "; "}[join]
        text = first.rstrip("?.") + sep + (_lower_first(second) if join in ("and", "comma") else second)
    text, noise = add_noise(text, rng, mix.noise)
    return Ask(text, kind, tuple(parts), "+".join(["multi-" + join, *noise]))


def _polarity(part: Part, text: str) -> Part:
    """A comparison whose words ask for the smaller organ ("Which kidney is smaller?") is answered with the smaller one."""
    if part.intent == "comparison" and re.search(r"\bsmaller\b", text.lower()):
        return Part(part.intent, part.key, part.second, part.phases, smaller=True)
    return part


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    return text if first.isupper() and len(first) > 1 else text[:1].lower() + text[1:]


def _scope_ok(ask: Ask) -> bool:
    """Whether the agent would read the question at the scope its frames ask (a multi-part question: the study)."""
    if ask.kind == "cxr":
        return True
    on_slice = asks_about_shown_slice(ask.text)
    if len(ask.parts) > 1:
        return not on_slice
    scope = SCOPES.get(ask.parts[0].intent)
    return scope is None or (scope == "slice") == on_slice
