"""Decoding constraints: ``transformers`` logits processors that keep an answer's ``[[key]]`` references and
the body side of tool calls and answers on what the question and the expert results allow.

The policy (which keys a reference may name, which side words are stopped) is stated once per class in
``ReferenceConstraint.allowed`` and ``SideConstraint.spells_other``; the masking does not re-evaluate it on
every vocabulary entry. Per tokenizer (computed once, cached) a ``TokenIndex`` holds each token's text, a
prefix index (lower-cased text → ids) and id sets of the tokens that can matter: tokens closing or opening
a reference, tokens spelling a side word or part of one. A step keeps a running decoded text
(``RunningText``: only the tokens since a verified anchor are decoded), walks the allowed keys' remaining
characters through the prefix index, and takes the other side's banned ids as a union of precomputed sets,
so its cost is that of the allowed set, not of the vocabulary.

What one generation round is kept on travels as one ``DecodingConstraints`` (the agent's choice: the result fields a
reference may name, the answer's fields, the sides of calls and answers, the question), handed to
``ChatBackend.stream_chat(..., constraints=...)``: an in-process backend turns it into these processors
(``DecodingConstraints.processors``); a remote one cannot, and the agent says so.

A failure inside a constraint does not end the answer: the step is decoded unconstrained, the failure is
appended to the processor's ``failures`` — the ``DecodingConstraints.failures`` it was built from, which the agent
reads to flag the turn — and logged.
"""

from __future__ import annotations

import logging
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from data.phantoms.labels import FINDING_SYNONYMS
from data.slice_facts import IN_SLICE, asks_about_shown_slice
from data.tool_text import REF_CLOSE, REF_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

log = logging.getLogger(__name__)

__all__ = ["OTHER_SIDE", "Ban", "DecodingConstraints", "ReferenceConstraint", "RunningText", "SideConstraint", "TokenIndex", "token_index", "token_texts",
           "yes_no_question"]

OTHER_SIDE = {"left": "right", "right": "left"}

_AUXILIARY = re.compile(r"(?:^|[:.,?!]\s*)(?:is|are|does|do|did|can|was|were|has|have)\b")
_YES_NO_CHOICE = re.compile(r"\b(?:yes or no|present or absent)\b")
_WH_WORD = re.compile(r"\b(?:which|what|where|how|when|who)\b")
_WHICH_SIDE = re.compile(r"\b(?:which|what) (?:side|hemisphere)\b")


def yes_no_question(question: str) -> bool:
    """Whether ``question`` asks for yes or no: a clause opening with an auxiliary verb ("Is there…",
    "Could you tell me: do you see…") that offers no other choice ("left or right", "CT or MRI"), or one
    offering "yes or no" / "present or absent"."""
    q = " ".join(question.lower().split())
    if _YES_NO_CHOICE.search(q):
        return True
    # "Can you check: which side…?": a polite lead-in's auxiliary does not make the question after it yes / no
    asked = q.partition(":")[2].strip() or q
    return bool(_AUXILIARY.search(asked)) and " or " not in asked


@dataclass
class DecodingConstraints:
    """What one generation round's decoding is kept on (empty fields constrain nothing).

    references: the result fields a ``[[key]]`` reference may name (``data.tool_text.reference_keys``);
    answer_keys: the fields that answer the question (the agent's choice): a reference opening the answer names one of
    them that is in ``references``; question: the user's question, the subject of such a reference otherwise;
    call_side: the one body side ("left" / "right") the question names: no tool-call argument names the other;
    answer_side: the one side this turn's calls measured: no answer text names the other.
    failures: filled by the backend, one line per step a constraint failed on (that step went unconstrained).
    """

    references: tuple[str, ...] = ()
    answer_keys: tuple[str, ...] = ()
    call_side: str = ""
    answer_side: str = ""
    question: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether any constraint applies this round."""
        return bool(self.references or self.call_side or self.answer_side)

    def processors(self, tokenizer: Any, prompt_length: int = 0) -> list[LogitsProcessor]:
        """The ``transformers`` logits processors of these constraints over ``tokenizer`` (sharing one running text
        and this object's ``failures``); ``prompt_length``: the prompt tokens in ``input_ids`` (0 when the prompt goes
        in as embeddings)."""
        running: dict[int, RunningText] = {}  # decoded once a step for every constraint
        shared = dict(prompt_length=prompt_length, running=running, failures=self.failures)
        out: list[LogitsProcessor] = []
        if self.references:
            out.append(ReferenceConstraint(tokenizer, self.references, question=self.question, answer_keys=self.answer_keys, **shared))
        if self.call_side:
            out.append(SideConstraint(tokenizer, self.call_side, **shared))
        if self.answer_side:
            out.append(SideConstraint(tokenizer, self.answer_side, in_answer=True, **shared))
        return out


class _Guarded(LogitsProcessor, ABC):
    """Runs ``_mask`` row by row; a failure leaves that step unconstrained and is recorded in ``failures``."""

    name = "constraint"

    def __init__(self, tokenizer: Any, prompt_length: int, running: dict[int, RunningText] | None,
                 failures: list[str] | None = None) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.index = token_index(tokenizer)
        self.pieces = self.index.pieces
        # one line per failed step (shared with a ``DecodingConstraints`` when built from one): the caller flags the turn
        self.failures: list[str] = [] if failures is None else failures
        # each batch row's running text; processors of one ``generate`` call may share it (decoded once a step)
        self._texts: dict[int, RunningText] = {} if running is None else running

    @property
    def failed(self) -> bool:
        """Whether any step was decoded unconstrained because the constraint failed."""
        return bool(self.failures)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(input_ids.shape[0]):
            try:
                text = self._texts.setdefault(b, RunningText(self.tokenizer)).update(input_ids[b, self.prompt_length:].tolist())
                banned = self._banned(text, scores.shape[-1])
            except Exception as exc:  # the answer goes on unconstrained; the failure is kept for the turn's flag
                step = input_ids.shape[1] - self.prompt_length
                self.failures.append(f"{self.name} failed at generated token {step}: {type(exc).__name__}: {exc}")
                log.exception("%s failed; decoding this step unconstrained", self.name)
                continue
            if banned is not None:
                banned.apply(scores[b])
        return scores

    @abstractmethod
    def _banned(self, text: str, vocab: int) -> Ban | None:
        """The tokens a subclass bans after ``text`` (None: none), over a vocabulary of ``vocab`` ids."""

    def _mask(self, vocab: int, ids: Iterable[int] | np.ndarray = (), *, all_candidates: bool = False,
              allowed: Sequence[int] | None = None) -> Ban | None:
        """The ``Ban`` of ``ids``, of every candidate (ids of the tokenizer that fit the ``vocab`` scores) or of
        every candidate but ``allowed``; None when it bans nothing or every score (the step is left to the model)."""
        n = min(len(self.pieces), vocab)
        if allowed is not None or all_candidates:
            kept = sorted({i for i in allowed or () if i < n})
            return Ban(torch.as_tensor(kept, dtype=torch.long), keep_below=n) if 0 < n - len(kept) < vocab else None
        chosen = np.unique(np.asarray(ids, dtype=np.int64))
        chosen = chosen[chosen < n]
        return Ban(torch.from_numpy(chosen)) if 0 < len(chosen) < vocab else None


@dataclass
class Ban:
    """The ids one step bans: ``ids`` (``keep_below`` 0), or every id below ``keep_below`` but ``ids`` (a
    reference's few allowed continuations: setting the row and restoring those costs less than a mask)."""

    ids: torch.Tensor
    keep_below: int = 0

    def apply(self, row: torch.Tensor) -> None:
        """Set the banned entries of a ``(vocab,)`` score row to -inf, in place."""
        ids = self.ids.to(row.device)
        if self.keep_below:
            kept = row[ids].clone()
            row[: self.keep_below] = -float("inf")
            row[ids] = kept
        else:
            row.index_fill_(0, ids, -float("inf"))


class ReferenceConstraint(_Guarded):
    """A ``transformers`` logits processor that keeps a ``[[key]]`` reference on the structure its own
    sentence names: when the text just before the ``[[`` (since the last ``.``, ``;``, ``,`` or reference)
    names fields of the conversation's expert results (``keys``), the reference may spell only those
    fields ("The left kidney volume is [[" → ``left kidney volume``, never ``right kidney volume``).
    When the sentence names none of them (say, an organ no result measured) nothing is masked, so the
    agent still shows "(not in the expert result)" rather than another structure's value. Text outside
    references is untouched. ``input_ids`` are the generated tokens (the prompt goes in as embeddings);
    with a text prompt pass ``prompt_length``. A reference that opens the answer (no words before it, as in
    a closed question's "[[edema?]]") names one of ``answer_keys`` when any of them is in ``keys``;
    otherwise it takes its subject from ``question``: the fields the question names; after a wh-question
    never a yes / no field, named or not ("Which side of the brain…?": the ``hemisphere`` field when a
    result has one); after a yes / no question about the slice on screen only an "in this slice" field,
    after any other never one.
    """

    name = "reference constraint"

    def __init__(self, tokenizer: Any, keys: Sequence[str], prompt_length: int = 0, question: str = "",
                 answer_keys: Sequence[str] = (), *, running: dict[int, RunningText] | None = None,
                 failures: list[str] | None = None) -> None:
        super().__init__(tokenizer, prompt_length, running, failures)
        self.question = question
        self.open, self.close = REF_OPEN, REF_CLOSE
        self.keys = sorted({_normal(k) for k in keys}, key=len, reverse=True)
        self.answer_keys = {_normal(k) for k in answer_keys} & set(self.keys)
        self._named = [(k, re.compile(r"\b" + re.escape(k).replace(r"\ ", r"\s+") + r"s?\b")) for k in self.keys]
        self._allowed_memo: dict[str, frozenset[str]] = {}
        self._phrase_base = ("", 0)

    def allowed(self, lead: str) -> set[str]:
        """The keys a reference after ``lead`` may name: those of the fields the lead's last phrase
        names (longest names first: "liver tumor" before "liver"; "edema" allows ``edema?`` too); empty
        when it names none. With no words in ``lead``, ``answer_keys`` (those in ``keys``) when given, else
        the fields the whole question names."""
        if lead not in self._allowed_memo:
            if len(self._allowed_memo) > 256:
                self._allowed_memo.clear()
            self._allowed_memo[lead] = frozenset(self._allowed(lead))
        return set(self._allowed_memo[lead])

    def _allowed(self, lead: str) -> set[str]:
        opens_answer = not re.search(r"[a-z]", lead.lower())
        if opens_answer and self.answer_keys:
            return set(self.answer_keys)
        from_question = opens_answer and bool(self.question)
        if from_question and yes_no_question(self.question):
            # a yes / no question is answered by the yes / no field of the finding it names; naming none
            # ("Is it abnormal?"), by any finding's, the model's to pick
            yes_no = {k for k in self.keys if k.endswith("?")}
            # one about the slice on screen by an "in this slice" field, any other by the rest
            on_slice = {k for k in yes_no if k.endswith(IN_SLICE + "?")}
            if on_slice and asks_about_shown_slice(self.question):
                yes_no = on_slice
            elif yes_no - on_slice:
                yes_no -= on_slice
            return self._named_findings(yes_no) or yes_no
        phrase = self.question.lower() if from_question else self._last_phrase(lead.lower())
        sides = set(re.findall(r"\b(left|right)\b", phrase))
        named: list[str] = []
        for key, pattern in self._named:
            # "left or right hemisphere?" asks for the side: it does not name the "right hemisphere" finding
            if from_question and len(sides) > 1 and re.search(r"\b(left|right)\b", key):
                continue
            if pattern.search(phrase) and not any(key in longer for longer in named):
                named.append(key)
        picked = {k for k in self.keys for n in named if k in (n, n + "?") or k.startswith(n + " ")}
        if from_question and "hemisphere" in self.keys and _WHICH_SIDE.search(self.question.lower()):
            return {"hemisphere"}  # "Which side of the brain contains the tumor?" asks for the side, not the tumour
        if from_question and _WH_WORD.search(self.question.lower()):
            # "Which side…?", "How large…?" are never answered by a finding's yes / no field
            return {k for k in (picked if named else self.keys) if not k.endswith("?")}
        return picked

    def _last_phrase(self, lead: str) -> str:
        """The lead's text since its last ``.``/``;``/``,``/newline + space, ``;`` or ``]]`` (``re.split``'s last
        piece). The scan starts after the last separator found in a lead this one extends, with the character
        after it unchanged (a separator match reads at most that far), so a growing answer is not re-scanned."""
        base, start = self._phrase_base
        if not lead.startswith(base):
            start = 0
        last = start
        for m in _PHRASE_END.finditer(lead, start):
            last = m.end()
            if last < len(lead):
                self._phrase_base = (lead[: last + 1], last)
        return lead[last:]

    def _named_findings(self, yes_no: set[str]) -> set[str]:
        """The yes / no fields whose finding the question names, each word by its stem ("Is there central
        necrosis?" → ``necrosis?``, "Does the tumour enhance?" → ``enhancing tumor?``; a field inside a
        longer named one gives way to it); empty when it names none."""
        text = " ".join(self.question.lower().split())
        # "mass" is the tumour, "collapsed lung" the pneumothorax: the words the data names each finding with
        also = [name for name, words in FINDING_SYNONYMS.items() if any(re.search(rf"\b{re.escape(w.lower())}\b", text) for w in words)]
        asked = re.findall(r"[a-z]+", " ".join([text, *also]))
        named = {k for k in yes_no if all(any(word[:4] in a for a in asked) for word in k[:-1].removesuffix(IN_SLICE).split())}
        return {k for k in named if not any(k != o and re.search(r"\b" + re.escape(k[:-1]) + r"\b", o) for o in named)}

    def ok(self, partial: str, keys: set[str]) -> bool:
        """Whether the text after an open ``[[`` can still become (or already closes) one of ``keys``."""
        partial = partial.lower()
        end = partial.find(self.close)
        if end >= 0:
            return _normal(partial[:end]) in keys and self.open not in partial[end:]
        return any((k + self.close).startswith(partial) for k in keys)

    def _banned(self, text: str, vocab: int) -> Ban | None:
        if text.rfind(TOOL_CALL_OPEN) > text.rfind(TOOL_CALL_CLOSE):  # a tool call's JSON is not an answer
            return None
        at = text.rfind(self.open)
        if at >= 0 and text.find(self.close, at) < 0:  # inside a reference: only the allowed continuations stay
            keys = self.allowed(text[:at])
            if not keys:
                return None
            partial = text[at + len(self.open):]
            return self._mask(vocab, allowed=self._continuations(partial, keys))
        # outside: only tokens that open one and already spell part of its key (" [[liver", …)
        idx = self.index
        opening = np.concatenate([idx.ref_inside, idx.bracket_start]) if text.endswith("[") else idx.ref_inside
        banned, keys_after = [], {}
        for i in opening.tolist():
            cand = text[-1:] + self.pieces[i]
            j = cand.find(self.open)
            if j < 0 or j + len(self.open) == len(cand):
                continue
            before = cand[1:j]  # a few distinct token beginnings ("", " ", "(", …): each lead's keys found once
            if before not in keys_after:
                keys_after[before] = self.allowed(text + before)
            keys = keys_after[before]
            if keys and not self.ok(cand[j + len(self.open):], keys):
                banned.append(i)
        return self._mask(vocab, banned) if banned else None

    def _continuations(self, partial: str, keys: set[str]) -> list[int]:
        """The ids whose text keeps ``partial`` on its way to one of ``keys`` + ``]]`` (or closes it there)."""
        idx, p = self.index, partial.lower()
        found: set[int] = set()
        for k in keys:  # still open: the token spells the next characters of an allowed key (prefix index)
            rest = (k + self.close)[len(p):] if (k + self.close).startswith(p) else None
            if rest is not None:
                for n in range(min(len(rest), idx.max_len) + 1):
                    found.update(idx.by_text.get(rest[:n], ()))
        for before, ids in idx.closing_by_before.items():  # closed inside the token: the text before "]]" is a key
            if _normal(p + before) in keys:
                found.update(ids)
        if p.endswith("]") and _normal(p[:-1]) in keys:  # closed across the boundary: "[[liver]" + "]…"
            found.update(idx.close_start.tolist())
        return [i for i in found if self.ok(partial + self.pieces[i], keys)]


class SideConstraint(_Guarded):
    """A ``transformers`` logits processor that keeps tool calls on the side of the body the question
    names: asked about the left kidney, a call's arguments may not spell "right" (nor a word on its way to
    it), so a small model's slip to ``right kidney`` cannot measure the wrong organ. Text outside
    ``<tool_call>`` is untouched. With ``in_answer`` it guards the answer instead (outside tool calls):
    after a call that measured only the left kidney, the answer cannot name the right side, of which the
    results hold nothing. ``input_ids`` are the generated tokens (pass ``prompt_length`` with a text prompt).
    """

    name = "side constraint"

    def __init__(self, tokenizer: Any, side: str, prompt_length: int = 0, *, in_answer: bool = False,
                 running: dict[int, RunningText] | None = None, failures: list[str] | None = None) -> None:
        if side not in OTHER_SIDE:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        super().__init__(tokenizer, prompt_length, running, failures)
        self.in_answer = in_answer
        self.other = OTHER_SIDE[side]
        # a call's arguments are enum values: any word on its way to the other side is stopped early;
        # free answer text only once the word can be nothing else ("righ")
        self.min_prefix = len(self.other) - 1 if in_answer else 2
        self._word = re.compile(r"\b" + self.other + r"\b")
        self._sets = self.index.side_sets(self.other, self.min_prefix)
        self._by_state = self._sets.bans  # per tokenizer: a state's ids are gathered once per process

    def spells_other(self, text: str) -> bool:
        """Whether the text names the other side, or ends in a word only it can complete."""
        low = text.lower()
        if self._word.search(low):
            return True
        tail = re.search(r"(?<![a-z])([a-z]+)$", low)
        return bool(tail) and len(tail.group(1)) >= self.min_prefix and self.other.startswith(tail.group(1))

    def _banned(self, text: str, vocab: int) -> Ban | None:
        at = text.rfind(TOOL_CALL_OPEN)
        in_call = at >= 0 and text.rfind(TOOL_CALL_CLOSE) < at
        if in_call == self.in_answer:
            return None
        if in_call:
            span = text[at + len(TOOL_CALL_OPEN):]
        else:  # the answer since the last call closed
            close = text.rfind(TOOL_CALL_CLOSE)
            span = text[close + len(TOOL_CALL_CLOSE):] if close >= 0 else text
        low, other = span.lower(), self.other
        # the other side's word already stands in the text, closed by a character of the text: every token spells it
        closed = _closed_word(other, low)
        word_run = _trailing(_WORD_RUN, low)  # the word the text ends in, completed by the token's first characters
        # ``spells_other`` reads the letters at the end, or before one final newline (``$``)
        before_newline = _trailing(_LETTER_RUN, low.removesuffix("\n"))
        letters = _trailing(_LETTER_RUN, low)  # the text's last letters, continued by an all-letter token
        state = (closed, len(word_run) if other.startswith(word_run) else -1,
                 bool(before_newline) and len(before_newline) >= self.min_prefix and other.startswith(before_newline),
                 len(letters) if other.startswith(letters) else -1, vocab)
        if state not in self._by_state:  # a handful of states
            self._by_state[state] = self._state_mask(*state)
        return self._by_state[state]

    def _state_mask(self, closed: bool, word_run: int, newline_tail: bool, letters: int, vocab: int) -> Ban | None:
        if closed:
            return self._mask(vocab, all_candidates=True)
        sets, other = self._sets, self.other
        parts = [sets.inside_word, sets.ending_prefix]  # the word inside the token; the token ending in "ri…"
        if word_run >= 0:
            parts.append(sets.completing[word_run])
        if newline_tail:
            parts.append(self.index.empty)
        if letters >= 0:
            for n in range(max(letters, 1, self.min_prefix), len(other) + 1):
                seg = other[letters:n]
                for spelled in ((seg, seg + "\n") if seg else ("\n",)):
                    parts.append(_ids(self.index.by_text.get(spelled, [])))
        banned = np.concatenate(parts)
        return self._mask(vocab, banned) if len(banned) else None


@dataclass
class SideSets:
    """Ids that spell ``word`` (a side) or part of it, for ``SideConstraint``: ``inside_word``: the token holds the
    whole word after a character of its own; ``completing[m]``: the token's text starts with ``word[m:]`` followed by
    a non-word character or its end (after text ending in ``word[:m]``); ``ending_prefix``: the token ends (or ends
    before one final newline), after a non-letter, in at least ``min_prefix`` letters that start ``word``."""

    inside_word: np.ndarray
    completing: list[np.ndarray]
    ending_prefix: np.ndarray
    bans: dict[tuple, Ban | None] = field(default_factory=dict)  # SideConstraint's ban of each text state


@dataclass
class TokenIndex:
    """What the constraints need to know of a tokenizer's vocabulary, computed once (``token_index``).

    pieces: each id's decoded text; by_text: lower-cased text → ids (the prefix index the key walk looks
    up); max_len: the longest text; closing_by_before: for tokens containing ``]]`` with no ``[[`` after it,
    the lower-cased text before the ``]]`` → ids; close_start: tokens starting with ``]`` and holding no ``[[``;
    ref_inside: tokens whose first ``[[`` has text after it; bracket_start: tokens of two or more characters
    starting with ``[``; empty: tokens with no text; decode: ids → the text ``tokenizer.decode(ids,
    skip_special_tokens=True)`` gives.
    """

    pieces: list[str]
    by_text: dict[str, list[int]]
    max_len: int
    closing_by_before: dict[str, list[int]]
    close_start: np.ndarray
    ref_inside: np.ndarray
    bracket_start: np.ndarray
    empty: np.ndarray
    decode: Callable[[list[int]], str]
    _side: dict[tuple[str, int], SideSets] = field(default_factory=dict)

    def side_sets(self, word: str, min_prefix: int) -> SideSets:
        """``SideSets`` of ``word`` (cached)."""
        if (word, min_prefix) not in self._side:
            word_re = re.compile(r"\b" + re.escape(word) + r"\b")
            inside, completing, ending = [], [[] for _ in range(len(word) + 1)], []
            for i, piece in enumerate(self.pieces):
                low = piece.lower()
                if any(m.start() > 0 for m in word_re.finditer(low)):
                    inside.append(i)
                for m in range(len(word) + 1):
                    rest = word[m:]
                    if low.startswith(rest) and (len(low) == len(rest) or not _WORD_CHAR.match(low[len(rest)])):
                        completing[m].append(i)
                tail = _TRAILING_LETTERS.search(low.removesuffix("\n"))
                if tail and tail.start() > 0 and len(tail.group()) >= min_prefix and word.startswith(tail.group()):
                    ending.append(i)
            self._side[(word, min_prefix)] = SideSets(_ids(inside), [_ids(c) for c in completing], _ids(ending))
        return self._side[(word, min_prefix)]


_PHRASE_END = re.compile(r"[.;,\n]\s|;|\]\]")
_WORD_CHAR = re.compile(r"\w")
_TRAILING_LETTERS = re.compile(r"[a-z]+\Z")
_INDEXES: dict[int, tuple[Any, TokenIndex]] = {}


def token_texts(tokenizer: Any) -> list[str]:
    """Each vocabulary id's decoded text (computed once per tokenizer)."""
    return token_index(tokenizer).pieces


def token_index(tokenizer: Any) -> TokenIndex:
    """The ``TokenIndex`` of ``tokenizer``, built on first use and kept while the tokenizer lives."""
    key = id(tokenizer)
    held = _INDEXES.get(key)
    if held is not None and held[0]() is tokenizer:
        return held[1]
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    by_text: dict[str, list[int]] = {}
    closing: dict[str, list[int]] = {}
    close_start, ref_inside, bracket_start, empty = [], [], [], []
    for i, piece in enumerate(pieces):
        low = piece.lower()
        by_text.setdefault(low, []).append(i)
        end = low.find(REF_CLOSE)
        if end >= 0 and REF_OPEN not in low[end:]:
            closing.setdefault(low[:end], []).append(i)
        if low.startswith("]") and REF_OPEN not in low:
            close_start.append(i)
        at = piece.find(REF_OPEN)
        if at >= 0 and at + len(REF_OPEN) < len(piece):
            ref_inside.append(i)
        if piece.startswith(REF_OPEN[0]) and len(piece) > 1:
            bracket_start.append(i)
        if not piece:
            empty.append(i)
    index = TokenIndex(pieces, by_text, max((len(p) for p in pieces), default=0), closing, _ids(close_start), _ids(ref_inside),
                       _ids(bracket_start), _ids(empty), _text_decoder(tokenizer))
    try:
        ref: Any = weakref.ref(tokenizer, lambda _, k=key: _INDEXES.pop(k, None))
    except TypeError:  # not weak-referenceable: keep it alive with its index
        ref = _Strong(tokenizer)
    _INDEXES[key] = (ref, index)
    return index


class RunningText:
    """The decoded text of a growing id list, decoding only the ids since an anchor.

    ``update(ids)`` returns ``tokenizer.decode(ids, skip_special_tokens=True)``. The anchor moves forward only
    where decoding the two halves separately gives the same text as decoding them together (checked on the
    window when it moves, with ``_AFTER_ANCHOR`` tokens after it so a split character or a space cleaned up
    around punctuation shows), so the text is the whole decode's; ids that do not extend the last list
    (a new sequence, a reordered beam) start over.
    """

    _WINDOW, _AFTER_ANCHOR = 24, 8

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._decode = token_index(tokenizer).decode
        self.ids: list[int] = []
        self.text = ""
        self.anchor, self.committed, self._next_try = 0, "", self._WINDOW

    def update(self, ids: list[int]) -> str:
        """The decoded text of ``ids`` (the same list as the last call's: the same text, nothing decoded)."""
        if ids == self.ids:
            return self.text
        if ids[: len(self.ids)] != self.ids:
            self.anchor, self.committed, self._next_try = 0, "", self._WINDOW
        self.ids = ids
        window = self._decode(ids[self.anchor:])
        if len(ids) - self.anchor >= self._next_try:
            cut = len(ids) - self._AFTER_ANCHOR
            head, rest = self._decode(ids[self.anchor:cut]), self._decode(ids[cut:])
            if head + rest == window:
                self.committed, self.anchor, window, self._next_try = self.committed + head, cut, rest, self._WINDOW
            else:  # not a clean split here: try again a few tokens on
                self._next_try = len(ids) - self.anchor + self._AFTER_ANCHOR
        self.text = self.committed + window
        return self.text


def _text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=True)``; the Rust decoder called directly (without transformers'
    per-call conversions) where the two agree on a text with the spaces a clean-up step would remove."""
    def plain(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not callable(getattr(backend, "decode", None)):
        return plain
    probe = tokenizer("It 's here , isn't it ? Yes . The [[left kidney]] : 12 mm × 3 — naïve 🙂", add_special_tokens=True)["input_ids"]
    probes = [probe, probe[1:], list(range(min(len(tokenizer), 300)))]
    if any(backend.decode(ids, skip_special_tokens=True) != plain(ids) for ids in probes):
        return plain

    def direct(ids: list[int]) -> str:
        return backend.decode(ids, skip_special_tokens=True)

    return direct


class _Strong:
    """A strong reference with ``weakref.ref``'s call interface."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _closed_word(word: str, text: str) -> bool:
    """Whether ``text`` holds ``word`` as a whole word (``\\b`` both sides) followed by a character of ``text``
    (``str.find`` and two character tests: a regex with ``\\b`` scans several times slower)."""
    at = text.find(word)
    while at >= 0:
        end = at + len(word)
        if end < len(text) and not _WORD_CHAR.match(text[end]) and (at == 0 or not _WORD_CHAR.match(text[at - 1])):
            return True
        at = text.find(word, at + 1)
    return False


_WORD_RUN, _LETTER_RUN = re.compile(r"\w*"), re.compile(r"[a-z]*")


def _trailing(run: re.Pattern[str], text: str) -> str:
    """The longest run of ``run``'s characters ending ``text`` (matched on the reversed text: a search for
    ``…*\\Z`` would try every start position)."""
    return run.match(text[::-1]).group()[::-1]


def _normal(text: str) -> str:
    """Lower case with single spaces, no leading or trailing ones (how keys are compared)."""
    return " ".join(text.lower().split())


def _ids(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
