"""What the decoding constraints need to know of a tokenizer's vocabulary, computed once per tokenizer
(``token_index``), and the running decoded text of a growing answer (``RunningText``).

``TokenIndex`` holds each token's text, a prefix index (lower-cased text → ids) and id sets of the tokens that can
matter to a constraint: tokens closing or opening a ``[[key]]`` reference, spelling a side word or part of one, or
holding a JSON quote. A constraint walks its allowed continuations through the prefix index and takes unions of these
sets, so a step costs what its allowed set costs, not the vocabulary.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.tool_text import REF_CLOSE, REF_OPEN

__all__ = ["QuoteSets", "RunningText", "SideSets", "TokenIndex", "ids_array", "token_index", "token_texts"]

_WORD_CHAR = re.compile(r"\w")
_TRAILING_LETTERS = re.compile(r"[a-z]+\Z")
_INDEXES: dict[int, tuple[Any, TokenIndex]] = {}


@dataclass
class SideSets:
    """Ids that spell ``word`` (a side) or part of it, for ``SideConstraint``: ``inside_word``: the token holds the
    whole word after a character of its own; ``completing[m]``: the token's text starts with ``word[m:]`` followed by
    a non-word character or its end (after text ending in ``word[:m]``); ``ending_prefix``: the token ends (or ends
    before one final newline), after a non-letter, in at least ``min_prefix`` letters that start ``word``."""

    inside_word: np.ndarray
    completing: list[np.ndarray]
    ending_prefix: np.ndarray
    bans: dict[tuple, Any] = field(default_factory=dict)  # SideConstraint's ban of each text state


@dataclass
class QuoteSets:
    """Tokens of a call's JSON, for the tool-call constraint: ``quoted``: holding at least one quote ``"``;
    ``quoted_twice``: at least two (only those can close one string and open another); ``closing_by_before``: the exact
    text before a token's first quote → ids; ``colon``: holding a ``:``; ``structural``: empty or white space, or
    starting (after white space) with ``"``, ``[``, ``]`` or ``,``."""

    quoted: np.ndarray
    quoted_twice: np.ndarray
    closing_by_before: dict[str, list[int]]
    colon: np.ndarray
    structural: np.ndarray
    bans: dict[tuple, Any] = field(default_factory=dict)  # the tool-call constraint's ban of each call state


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
    _quotes: list[QuoteSets] = field(default_factory=list)

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
            self._side[(word, min_prefix)] = SideSets(ids_array(inside), [ids_array(c) for c in completing], ids_array(ending))
        return self._side[(word, min_prefix)]

    def quote_sets(self) -> QuoteSets:
        """``QuoteSets`` of this vocabulary (cached)."""
        if not self._quotes:
            quoted, twice, closing, colon, structural = [], [], {}, [], []
            for i, piece in enumerate(self.pieces):
                n = piece.count('"')
                if n:
                    quoted.append(i)
                    closing.setdefault(piece[: piece.find('"')], []).append(i)
                if n > 1:
                    twice.append(i)
                if ":" in piece:
                    colon.append(i)
                lead = piece.lstrip(" \t\r\n")
                if not lead or lead[0] in '"[],':
                    structural.append(i)
            self._quotes.append(QuoteSets(ids_array(quoted), ids_array(twice), closing, ids_array(colon), ids_array(structural)))
        return self._quotes[0]


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
    index = TokenIndex(pieces, by_text, max((len(p) for p in pieces), default=0), closing, ids_array(close_start),
                       ids_array(ref_inside), ids_array(bracket_start), ids_array(empty), _text_decoder(tokenizer))
    try:
        ref: Any = weakref.ref(tokenizer, lambda _, k=key, d=_INDEXES: d.pop(k, None))  # the dict bound: gone at shutdown
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
        self.source: Any = None  # the ``input_ids`` tensor ``text`` was last read from (set by the processors)
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


def ids_array(values: list[int]) -> np.ndarray:
    """Token ids as an int64 array."""
    return np.asarray(values, dtype=np.int64)


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
