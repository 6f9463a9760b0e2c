"""The decoding policy: what each constraint allows, one named rule per line.

The processors (``ReferenceConstraint``, ``SideConstraint``, ``ToolCallConstraint``) read these tables; the masking
(prefix walks, precomputed id sets) only carries them out. A table is read top down and the first rule whose
``applies_when`` holds decides (``first_rule``); each rule has a test in a clinician's words
(``tests/vlm/test_constraint_policy.py``).

- ``REFERENCE_RULES``: the result fields a ``[[key]]`` reference may name, given where it opens (``ReferenceContext``)
  and what the parsed question asks (``AskedFacts``, read off ``vlm.intent.QuestionIntent``: the question text itself is
  never read here).
- ``SIDE_RULES``: which body side a tool call's arguments and the answer may not name (``SideStop``).
- ``CALL_RULES``: the values a tool call's name and arguments may take (``CallSlot``); ``call_choices`` narrows an
  expert's schema choices to what the question names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from data.slice_facts import IN_SLICE

if TYPE_CHECKING:
    from vlm.intent import QuestionIntent

__all__ = [
    "ARGUMENT_OBJECTS",
    "AskedFacts",
    "CALL_RULES",
    "OTHER_SIDE",
    "REFERENCE_RULES",
    "SIDE_RULES",
    "CallSlot",
    "ReferenceContext",
    "Rule",
    "SideStop",
    "call_choices",
    "first_rule",
    "normal_key",
    "schema_choices",
    "stop_letters",
]

S = TypeVar("S")
E = TypeVar("E")

OTHER_SIDE = {"left": "right", "right": "left"}
ARGUMENT_OBJECTS = ("arguments", "parameters")  # the keys a call's arguments object goes by (``vlm.tools``)


@dataclass(frozen=True)
class Rule(Generic[S, E]):
    """One rule: ``name`` says it in a clinician's words, ``applies_when`` tells the situations it decides, ``effect``
    what it allows there."""

    name: str
    applies_when: Callable[[S], bool]
    effect: Callable[[S], E]


def first_rule(rules: Sequence[Rule[S, E]], situation: S) -> Rule[S, E] | None:
    """The first rule of ``rules`` that applies to ``situation`` (None: none does)."""
    return next((r for r in rules if r.applies_when(situation)), None)


# ---- references -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AskedFacts:
    """What the parsed question asks, as the reference rules read it (``AskedFacts.of`` a ``vlm.intent.QuestionIntent``).

    form: ``yes_no``, ``either_or``, ``wh`` or ``command``; family: the intent family ("presence", "side", "size", …);
    scope: ``slice`` (the picture on screen) or ``study``; terms: the lexicon keys of the structures and findings it
    names (lay terms, abbreviations and typos already read: "collapsed lung" → ``pneumothorax``); side: the one body
    side it names ("left" / "right"; "" for both or neither).
    """

    form: str
    family: str = "other"
    scope: str = "study"
    terms: tuple[str, ...] = ()
    side: str = ""

    @classmethod
    def of(cls, intent: QuestionIntent) -> AskedFacts:
        """The facts of a parsed question (``vlm.intent.parse_question``)."""
        return cls(intent.form, intent.family, intent.scope, tuple(intent.terms), intent.side)

    @property
    def yes_no(self) -> bool:
        """Whether it asks for yes or no; a presence question put as a request ("Check the film for a pneumothorax.",
        "Looking at the image, is there a mass?") asks it too."""
        return self.form == "yes_no" or (self.form == "command" and self.family == "presence")

    @property
    def wh(self) -> bool:
        return self.form == "wh"

    @property
    def which_side(self) -> bool:
        """Whether it asks which side (of the body, of the brain) something is on."""
        return self.family == "side"

    @property
    def on_slice(self) -> bool:
        return self.scope == "slice"

    @property
    def offers_both_sides(self) -> bool:
        """Whether it asks for a side without naming one ("left or right hemisphere?"): it names no one-sided field."""
        return self.family == "side" and not self.side

    @property
    def words(self) -> tuple[str, ...]:
        """The words of the named terms and of the named side."""
        return tuple(re.findall(r"[a-z]+", " ".join((*self.terms, self.side)).lower()))


class ReferenceContext:
    """Where a ``[[`` reference opens: the result fields it may name (``keys``, normalised, longest first), the answer
    text before it (``lead``) and that text's last phrase (``phrase``: since its last ``.``, ``;``, ``,`` or reference),
    what the parsed question asks (``asked``; None: no question, so an opening reference has no subject) and the agent's
    ``answer_keys`` (the fields that answer it). A reference opening the answer takes its subject from ``asked``."""

    def __init__(self, keys: Sequence[str], lead: str, phrase: str, asked: AskedFacts | None = None, answer_keys: Iterable[str] = (),
                 patterns: Sequence[tuple[str, re.Pattern[str]]] | None = None) -> None:
        self.keys, self.lead, self.asked = tuple(keys), lead, asked
        self.answer_keys = frozenset(answer_keys)
        self.opens_answer = not _LETTER.search(lead)  # no words before it
        self.from_question = self.opens_answer and asked is not None  # its subject is the question's
        self.phrase = phrase
        self._patterns = patterns if patterns is not None else key_patterns(self.keys)

    @property
    def asks_yes_no(self) -> bool:
        return self.asked is not None and self.asked.yes_no

    @property
    def asks_wh(self) -> bool:
        return self.asked is not None and self.asked.wh

    @property
    def asks_which_side(self) -> bool:
        return self.asked is not None and self.asked.which_side

    @property
    def asks_about_slice(self) -> bool:
        return self.asked is not None and self.asked.on_slice

    @cached_property
    def yes_no_fields(self) -> frozenset[str]:
        return frozenset(k for k in self.keys if k.endswith("?"))

    @cached_property
    def slice_fields(self) -> frozenset[str]:
        """The "in this slice" yes / no fields."""
        return frozenset(k for k in self.yes_no_fields if k.endswith(IN_SLICE + "?"))

    @cached_property
    def study_yes_no_fields(self) -> frozenset[str]:
        """The whole study's yes / no fields (the slice's when the results hold no others)."""
        return (self.yes_no_fields - self.slice_fields) or self.yes_no_fields

    def findings_named(self, fields: frozenset[str]) -> frozenset[str]:
        """The fields of ``fields`` whose finding the question names; all of them when it names none."""
        return (named_findings(self.asked.words, fields) if self.asked is not None else frozenset()) or fields

    @cached_property
    def named_fields(self) -> frozenset[str]:
        """The fields the phrase names, or, opening the answer, the parsed question's terms (longest names first: "liver
        tumor" before "liver"; a name allows its yes / no field and the fields it starts: "edema" → ``edema?``, ``edema
        volume``). A question offering both sides ("left or right hemisphere?") asks for the side: it names no sided
        field."""
        if self.from_question and self.asked is not None:
            names, both_sides = sorted(self.asked.terms, key=len, reverse=True), self.asked.offers_both_sides
        else:
            names, both_sides = [key for key, pattern in self._patterns if pattern.search(self.phrase)], False
        named: list[str] = []
        for name in names:
            if both_sides and re.search(r"\b(left|right)\b", name):
                continue
            if not any(name in longer for longer in named):
                named.append(name)
        return frozenset(k for k in self.keys for n in named if k in (n, n + "?") or k.startswith(n + " "))


def _not_yes_no(fields: Iterable[str]) -> frozenset[str]:
    return frozenset(k for k in fields if not k.endswith("?"))


REFERENCE_RULES: tuple[Rule[ReferenceContext, frozenset[str]], ...] = (
    Rule("the reference opening the answer names a field the agent chose to answer with",
         lambda c: c.opens_answer and bool(c.answer_keys), lambda c: c.answer_keys),
    Rule("a yes / no question about the slice on screen opens its answer with an in-this-slice field",
         lambda c: c.from_question and c.asks_yes_no and bool(c.slice_fields) and c.asks_about_slice,
         lambda c: c.findings_named(c.slice_fields)),
    Rule("a yes / no question opens its answer with the yes / no field of the finding it names",
         lambda c: c.from_question and c.asks_yes_no, lambda c: c.findings_named(c.study_yes_no_fields)),
    Rule("asked which side of the brain, the answer opens with the hemisphere field",
         lambda c: c.from_question and "hemisphere" in c.keys and c.asks_which_side, lambda c: frozenset({"hemisphere"})),
    Rule("a wh-question never opens its answer with a yes / no field",
         lambda c: c.from_question and c.asks_wh, lambda c: _not_yes_no(c.named_fields or c.keys)),
    Rule("a reference names the field its own sentence names, and nothing is kept when it names none",
         lambda c: True, lambda c: c.named_fields),
)


def named_findings(asked: Sequence[str], fields: Iterable[str]) -> frozenset[str]:
    """The yes / no ``fields`` whose finding the ``asked`` words name (``AskedFacts.words``: the question's lexicon terms
    and side), each word of the field by its stem ("necrotic core" → ``necrosis?``, "enhancing tumor" → ``enhancing
    tumor?``; "in this slice" and linking words such as "on the" need no match); a field inside a longer named one
    gives way to it; empty when they name none."""
    named = {k for k in fields if all(any(word[:4] in a for a in asked) for word in _finding_words(k))}
    return frozenset(k for k in named if not any(k != o and re.search(r"\b" + re.escape(k[:-1]) + r"\b", o) for o in named))


def _finding_words(field: str) -> list[str]:
    """The words a yes / no field's finding is named by ("kidney cyst on the left in this slice?" → kidney, cyst, left)."""
    return [w for w in field[:-1].removesuffix(IN_SLICE).split() if w not in _LINKING_WORDS]


_LINKING_WORDS = frozenset(("on", "the", "in", "of", "a", "an", "at"))


def key_patterns(keys: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    """Each key with the pattern of its name in text (whole words, any spacing, an optional plural "s")."""
    return [(k, re.compile(r"\b" + re.escape(k).replace(r"\ ", r"\s+") + r"s?\b")) for k in keys]


def normal_key(text: str) -> str:
    """Lower case with single spaces, no leading or trailing ones (how keys are compared)."""
    return " ".join(text.lower().split())


_LETTER = re.compile(r"[a-z]", re.IGNORECASE)


# ---- sides ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SideStop:
    """A side guard: the text may not name the side opposite ``side``: a tool call's arguments (``in_answer`` False)
    or the answer outside calls (True)."""

    side: str
    in_answer: bool


SIDE_RULES: tuple[Rule[Any, SideStop], ...] = (  # read on a ``DecodingConstraints``
    Rule("asked about one side, a tool call cannot name the other side", lambda c: bool(c.call_side),
         lambda c: SideStop(c.call_side, in_answer=False)),
    Rule("after measuring one side, the answer cannot name the other side", lambda c: bool(c.answer_side),
         lambda c: SideStop(c.answer_side, in_answer=True)),
)


def stop_letters(other: str, in_answer: bool) -> int:
    """How many letters of the other side's word may stand before it is stopped: a call's arguments are enum values,
    so a word on its way to it is stopped at its second letter ("ri"); free answer text only once the word can be
    nothing else ("righ", not "rib")."""
    return len(other) - 1 if in_answer else 2


# ---- tool-call arguments --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallSlot:
    """A string value of a tool call's JSON: ``path``, the keys from the call's object to it (``("name",)``,
    ``("arguments", "targets")``; an array's elements stand where the array does); ``expert``, the name the call gave
    before it ("" when none yet); ``offered``: expert → argument → allowed values (``DecodingConstraints.call_arguments``)."""

    path: tuple[str, ...]
    expert: str
    offered: Mapping[str, Mapping[str, tuple[str, ...]]]

    def choices(self, argument: str) -> tuple[str, ...] | None:
        """The values ``argument`` allows for the call's expert (for any offered expert before the name); None: free."""
        if self.expert:
            return self.offered.get(self.expert, {}).get(argument) if self.expert in self.offered else None
        found = [v for table in self.offered.values() for v in table.get(argument, ())]
        return tuple(dict.fromkeys(found)) if any(argument in t for t in self.offered.values()) else None


CALL_RULES: tuple[Rule[CallSlot, tuple[str, ...] | None], ...] = (
    Rule("a tool call names one of the experts offered for the study", lambda s: s.path == ("name",), lambda s: tuple(s.offered)),
    Rule("a call's argument with choices takes one the question allows", lambda s: len(s.path) == 2 and s.path[0] in ARGUMENT_OBJECTS,
         lambda s: s.choices(s.path[1])),
)


def call_choices(schemas: Mapping[str, Mapping[str, Any]], named: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, dict[str, tuple[str, ...]]]:
    """Expert → argument → allowed string values, for ``DecodingConstraints.call_arguments``: each argument of the
    experts' JSON ``schemas`` (``Expert.parameters``) that lists choices (``enum``, also inside ``items`` / ``anyOf``)
    allows them; narrowed, where ``named[expert][argument]`` gives values among them (what the question names,
    ``vlm.grounding.question_arguments``), to those. Every expert of ``schemas`` appears (its name is allowed)."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for expert, schema in schemas.items():
        table: dict[str, tuple[str, ...]] = {}
        for argument in dict(schema.get("properties") or {}):
            choices = schema_choices(schema, argument)
            if not choices:
                continue
            asked = (named or {}).get(expert, {}).get(argument)
            asked = [asked] if isinstance(asked, str) else list(asked or ())
            narrowed = tuple(v for v in dict.fromkeys(asked) if v in choices)
            table[argument] = narrowed or choices
        out[expert] = table
    return out


def schema_choices(schema: Mapping[str, Any], argument: str) -> tuple[str, ...]:
    """The string choices ``argument`` lists in a JSON schema (``enum``, ``items.enum``, or those of ``anyOf`` /
    ``oneOf`` alternatives); empty when it lists none."""
    spec = dict(schema.get("properties") or {}).get(argument) or {}
    found: list[Any] = []
    for alt in [spec, *(spec.get("anyOf") or []), *(spec.get("oneOf") or [])]:
        found += list(alt.get("enum") or []) + list((alt.get("items") or {}).get("enum") or [])
    return tuple(dict.fromkeys(c for c in found if isinstance(c, str)))
