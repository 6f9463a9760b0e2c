"""Expert conversations on questions asked the way clinicians ask them, for the ``medical-ift`` stage.

A question is composed, seeded, from an intent's frame (``question_frames.FRAMES``), a lexicon name of the structure or
finding (``data.lexicon.TERMS``: synonyms, abbreviations, eponyms, lay terms) and noise (``question_noise``); two intents
may be joined into one multi-part question. Its answer is grounded like every expert conversation: the call naming the
structure (``ct_segmentation``'s ``targets``), the tool message of the expert's result on the phantom's ground truth
(``tool_result_from_truth``), and a short answer naming the result fields that answer the question's form —
``[[cardiomegaly normal?]]`` when asked whether the heart size is normal, ``[[larger kidney]]`` for a comparison,
``[[kidney cyst side]]`` for a side, ``[[pneumothorax]]`` (present / not present) for "no pneumothorax, right?".

Whether a question is about the slice on screen follows the agent's own reading (``asks_about_shown_slice``): the tool
message then carries the slice's findings, as at inference, and a slice question's answer names them.

Decontamination: a composed question whose text (or one of its sentences), normalised (lower case, punctuation to
spaces), has its SHA-256 in ``EXCLUDED_QUESTIONS`` is drawn again. That file lists the hashes of the frozen held-out
evaluation phrasings and nothing else: the generator never sees their words, and no held-out phrasing is trained on
verbatim, however common its wording.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.instructions.expert_dialogues import (Dialogue, ct_report_answer, ct_summary_answer, cxr_report_answer, grounded_dialogue,
                                                mri_summary_answer, tool_result_from_truth)
from data.instructions.paraphrase import expand
from data.instructions.question_frames import (EXPERT_NAMES, FRAMES, PHASE_NAMES, SCOPES, SIDE_ORGAN, STUDY_NAMES, display, modifier_names,
                                               noun_names, normal_subjects, pick_name, plural, with_determiner)
from data.instructions.question_noise import NoiseConfig, add_noise
from data.errors import M3Error
from data.instructions.views import CaseView
from data.lexicon import TERMS
from data.phantoms.labels import CXR_FINDINGS
from data.slice_facts import asks_about_shown_slice
from data.tool_text import format_tool_call, format_tool_result, resolve_references, value_reference

__all__ = ["ClinicianQuestionError", "ClinicianMix", "Part", "Ask", "FAMILIES", "EXCLUDED_QUESTIONS", "draw_question", "clinician_dialogue", "sample_questions",
           "normalised_question", "question_hash"]



class ClinicianQuestionError(M3Error, RuntimeError):
    """Clinician-style questions cannot be generated as configured (a missing decontamination list, frames that never
    read at their scope)."""


EXCLUDED_QUESTIONS = Path(__file__).with_name("excluded_questions.txt")

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

_CT_LESIONS = ("liver tumor", "lung nodule", "kidney cyst")
_CT_ORGANS = ("liver", "spleen", "left kidney", "right kidney", "kidneys", "left lung", "right lung", "lungs", "heart", "aorta", "spine")
_PAIRS = {"kidneys": "kidney", "lungs": "lung"}
_MRI_FINDING = {"tumor": "tumor", "enhancing tumor": "enhancing tumor", "necrotic core": "necrosis", "edema": "edema"}
_MRI_VOLUME = {"tumor": "whole tumor", "tumor core": "tumor core", "enhancing tumor": "enhancing tumor", "necrotic core": "necrotic core",
               "edema": "edema"}
_NO_KEY = ("phase", "contrast", "either_phase", "normal_study", "abnormal_study", "report", "run_expert", "segment_everything",
           "segment_organs", "segment_lesions", "segment_tumor", "comparison", "either_larger")
# per study kind: intent → the lexicon keys it asks about (() for intents about the study as a whole)
_INTENT_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "ct": {**{i: _CT_LESIONS for i in ("presence", "presence_slice", "count", "size", "size_slice", "side", "side_slice", "tumor_volume",
                                       "likelihood", "negation", "either_side", "either_size", "normal", "abnormal")},
           "volume": _CT_ORGANS, "comparison": ("kidneys", "lungs"), "either_larger": ("kidneys", "lungs"),
           **{i: () for i in ("phase", "contrast", "either_phase", "normal_study", "abnormal_study", "report", "run_expert",
                              "segment_everything", "segment_organs", "segment_lesions")}},
    "mri": {**{i: tuple(_MRI_FINDING) for i in ("presence", "likelihood", "negation")},
            **{i: ("tumor",) for i in ("presence_slice", "size", "size_slice", "side", "side_slice", "either_side", "either_size", "normal",
                                       "abnormal")},
            "tumor_volume": tuple(_MRI_VOLUME), **{i: () for i in ("normal_study", "abnormal_study", "report", "run_expert", "segment_tumor")}},
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
_PHASE_INTENTS = ("phase", "contrast", "either_phase")
_EXPERT = {"ct": "ct_segmentation", "mri": "mri_brain_tumor", "cxr": "cxr_classification"}
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
            raise ValueError(f"ClinicianMix.per_case must be 0..64 conversations per case, got {self.per_case}.")
        if not 0.0 <= self.multi_part <= 1.0:
            raise ValueError(f"ClinicianMix.multi_part must be a share in [0, 1], got {self.multi_part}.")


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


def clinician_dialogue(view: CaseView, rng: np.random.Generator, mix: ClinicianMix = ClinicianMix(), intent: str | None = None) -> Dialogue:
    """One clinician-style question about ``view``'s study, the expert call naming what it asks, the tool message of
    the expert's result on the case's ground truth, and the answer naming the result fields; ``info`` holds the
    question's intent family, frame groups and style."""
    present, in_slice = _present(view)
    for _ in range(20):
        ask = draw_question(view.kind, rng, present=present, in_slice=in_slice, mix=mix, intent=intent)
        on_slice = view.kind != "cxr" and asks_about_shown_slice(ask.text)
        if not (on_slice and any(_slice_name(view.kind, p.key) in view.ambiguous for p in ask.parts)):  # never about a sliver
            break
    arguments = _arguments(view.kind, ask.parts, mix.target_lists)
    result = tool_result_from_truth(view.kind, view.truth, arguments, rng, view.facts if on_slice else None)
    tool = format_tool_result(result)
    answer = " ".join(dict.fromkeys(_answer(view, p, on_slice, tool) for p in ask.parts))  # two parts may share an answer
    turns = [{"from": "human", "value": ask.text}, {"from": "gpt", "value": format_tool_call(_EXPERT[view.kind], arguments)},
             {"from": "tool", "value": tool}, {"from": "gpt", "value": answer}]
    info = {"family": ask.family, "intents": [p.intent for p in ask.parts], "style": ask.style}
    return grounded_dialogue(turns, [{"name": _EXPERT[view.kind], "arguments": arguments}], [result], "clinician", info)


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
    """Whether the question, one of its lines or one of its sentences is listed in ``EXCLUDED_QUESTIONS``."""
    excluded = _excluded_hashes()
    pieces = {text, *text.splitlines(), *re.split(r"(?<=[.?!])\s+|\n", text)}
    return any(question_hash(p) in excluded for p in pieces if p.strip())


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


# ---- grounding


def _present(view: CaseView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The lexicon keys present in the study, and on the slice shown."""
    t, f = view.truth, view.facts
    if view.kind == "ct":
        return (tuple(k for k in _CT_LESIONS if t["lesion_counts"][k] > 0), tuple(k for k in _CT_LESIONS if f["lesion_counts"][k] > 0))
    if view.kind == "mri":
        sub = t["subregion_volumes_ml"]
        on = {"tumor": t["tumor_present"], "enhancing tumor": sub["enhancing tumor"] > 0, "necrotic core": sub["necrotic core"] > 0,
              "edema": sub["edema"] > 0}
        return tuple(k for k, v in on.items() if v), (("tumor",) if f["tumor_visible"] else ())
    return tuple(k for k in CXR_FINDINGS if t["findings"][k]), ()


def _slice_name(kind: str, key: str) -> str:
    return "tumor" if kind == "mri" else key


def _arguments(kind: str, parts: tuple[Part, ...], lists: bool = False) -> dict:
    """The call's arguments: ``ct_segmentation``'s targets naming what the parts ask — one name, or several as a list
    (``lists``) or as the group covering them ("organs", "lesions", "everything"); none for the other experts."""
    if kind != "ct":
        return {}
    targets: list[str] = []
    # the phase comes with every call: the aorta is named for it only when nothing else is
    for p in [p for p in parts if p.intent not in _PHASE_INTENTS] or parts:
        for t in _targets(p):
            if t not in targets:
                targets.append(t)
    if len(targets) == 1:
        return {"targets": targets[0]}
    if lists:
        return {"targets": targets}
    if all(t in _CT_LESIONS for t in targets):
        return {"targets": "lesions"}
    return {"targets": "organs" if all(t in _CT_ORGANS for t in targets) else "everything"}


def _targets(part: Part) -> list[str]:
    whole = {"normal_study": "lesions", "abnormal_study": "lesions", "report": "lesions", "run_expert": "everything",
             "segment_everything": "everything", "segment_organs": "organs", "segment_lesions": "lesions"}
    if part.intent in whole:
        return [whole[part.intent]]
    if part.intent in _PHASE_INTENTS:
        return ["aorta"]  # the expert reads the phase from the aorta (and the liver) whatever is asked
    if part.key in _PAIRS:
        return [f"left {_PAIRS[part.key]}", f"right {_PAIRS[part.key]}"]
    return [part.key]


def _answer(view: CaseView, part: Part, on_slice: bool, tool: str) -> str:
    """The first candidate answer whose references the tool message fills."""
    candidates = _candidates(view, part, on_slice)
    for text in candidates:
        if not resolve_references(text, [tool])[1]:
            return text
    raise AssertionError(f"no answer to a {part.intent} question on {part.key or 'the study'} resolves against {tool}")


def _candidates(view: CaseView, part: Part, on_slice: bool) -> list[str]:
    kind, k, intent = view.kind, part.key, part.intent
    R = value_reference
    if intent in ("report", "run_expert") or intent.startswith("segment_"):
        return [_whole_answer(view, intent)]
    unread = "The contrast phase is not in the expert result: it is read from the aorta and the liver, and the scan does not show both."
    if intent in ("phase", "either_phase"):
        return [f"Contrast phase: {R('phase')}.", unread]
    if intent == "contrast":
        return [f"Contrast: {R('contrast?')} ({R('phase')}).", unread]
    if intent == "normal_study":
        return [f"Normal: {R('normal?')}."]
    if intent == "abnormal_study":
        if kind == "ct":
            return [" ".join(f"{_cap(x)}s: {R(x)}." for x in _CT_LESIONS)]
        if kind == "mri":
            return [" ".join(f"{_cap(x)}: {R(x)}." for x in _MRI_FINDING.values())]
        return [f"Positive findings: {R('positive findings')}."]
    if intent in ("comparison", "either_larger"):
        p = _PAIRS[k]
        both = f"Left {p} {R(f'left {p} volume')}, right {p} {R(f'right {p} volume')}."
        vols = view.truth["organ_volumes_ml"]
        if min(vols[f"left {p}"], vols[f"right {p}"]) <= 0:  # one side not in the scan: no comparison to make
            return [both]
        word = "smaller" if part.smaller else "larger"
        return [f"{_cap(word)} {p}: {R(f'{word} {p}')}.", both]
    if intent == "volume":
        if k in _PAIRS:
            p = _PAIRS[k]
            return [f"Left {p} {R(f'left {p} volume')}, right {p} {R(f'right {p} volume')}."]
        return [f"The {k} volume is {R(k + ' volume')}."]
    if intent == "either_findings":
        return [f"{_cap(k)}: {R(k)}. {_cap(part.second)}: {R(part.second)}."]
    name = _MRI_FINDING.get(k, k) if kind == "mri" else k
    plural_name = f"{name}s" if kind == "ct" else name  # "Kidney cysts: none found."
    statement = f"{_cap(plural_name)}: {R(name)}."
    if intent in ("presence", "abnormal"):
        return [f"{_cap(name)}: {R(name + '?')}."]
    if intent in ("likelihood", "negation"):
        return [statement]
    if intent == "normal":
        return [f"Normal: {R(name + ' normal?')}."]
    if intent == "count":
        return [f"Number of {name}s: {R(name + ' count')}."]
    if intent == "tumor_volume":
        if kind == "mri":
            return [f"{_cap(_MRI_VOLUME[k])} volume: {R(_MRI_VOLUME[k] + ' volume')}."]
        return [f"{_cap(name)} volume: {R(name + ' volume')}.", statement]
    slice_ = _slice_name(kind, k) + " in this slice"
    in_slice = [f"{_cap(slice_)}: {R(slice_ + '?')}."]
    if intent == "presence_slice":
        return in_slice
    whole = "whole tumor" if kind == "mri" else name
    if intent in ("size", "either_size"):
        return [f"{'Tumor size' if kind == 'mri' else 'Largest ' + name}: {R(whole + ' size')}.", statement]
    if intent == "size_slice":
        return [f"{_cap(slice_)}: {R(slice_ + ' size')}."] + in_slice
    side = [f"{_cap(name)} side: {R(name + ' side')}.", statement]
    if intent == "side_slice" or intent == "either_side" and on_slice:
        return side if kind == "mri" else [f"{_cap(slice_)}: {R(slice_ + ' side')}."] + in_slice
    if intent in ("side", "either_side"):
        return side
    raise ValueError(f"no answer for intent {intent!r}.")


def _whole_answer(view: CaseView, intent: str) -> str:
    if intent == "report":
        if view.kind == "ct":
            return ct_report_answer(view)
        if view.kind == "cxr":
            return cxr_report_answer(view)
        R = value_reference
        return (f"Findings: Brain MRI (T1, T1c, T2, FLAIR), read with the brain tumor expert. Present: {R('positive findings')}. "
                f"Absent: {R('negative findings')}. Impression: {R('impression')}")
    if view.kind == "mri":
        return mri_summary_answer()
    if view.kind == "cxr":
        return "Findings: " + "; ".join(f"{f} {value_reference(f)}" for f in CXR_FINDINGS) + "."
    mode = {"segment_organs": "organs", "segment_lesions": "lesions"}.get(intent, "everything")
    return ct_summary_answer(tool_result_from_truth("ct", view.truth, {"targets": mode}, np.random.default_rng(0)), mode)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
