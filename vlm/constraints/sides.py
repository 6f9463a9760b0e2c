"""``SideConstraint``: tool calls kept on the body side the question names, and the answer on the side the calls
measured (``policy.SIDE_RULES``), by unions of the vocabulary's precomputed side-word id sets."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from data.tool_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.constraints.masking import Ban, GuardedProcessor
from vlm.constraints.policy import OTHER_SIDE, stop_letters
from vlm.constraints.vocabulary import RunningText, ids_array

__all__ = ["SideConstraint"]

_WORD_CHAR = re.compile(r"\w")
_WORD_RUN, _LETTER_RUN = re.compile(r"\w*"), re.compile(r"[a-z]*")


class SideConstraint(GuardedProcessor):
    """A ``transformers`` logits processor that keeps tool calls on the side of the body the question
    names: asked about the left kidney, a call's arguments may not spell "right" (nor a word on its way to
    it), so a small model's slip to ``right kidney`` cannot measure the wrong organ. Text outside
    ``<tool_call>`` is untouched. With ``in_answer`` it guards the answer instead (outside tool calls):
    after a call that measured only the left kidney, the answer cannot name the right side, of which the
    results hold nothing. How early a word is stopped: ``policy.stop_letters``. ``input_ids`` are the generated
    tokens (pass ``prompt_length`` with a text prompt).
    """

    name = "side constraint"

    def __init__(self, tokenizer: Any, side: str, prompt_length: int = 0, *, in_answer: bool = False,
                 running: dict[int, RunningText] | None = None, failures: list[str] | None = None) -> None:
        if side not in OTHER_SIDE:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        super().__init__(tokenizer, prompt_length, running, failures)
        self.in_answer = in_answer
        self.other = OTHER_SIDE[side]
        self.min_prefix = stop_letters(self.other, in_answer)
        self._word = re.compile(r"\b" + self.other + r"\b")
        self._sets = self.index.side_sets(self.other, self.min_prefix)
        self._by_state = self._sets.bans  # per tokenizer: a state's ids are gathered once per process

    def spells_other(self, text: str) -> bool:
        """Whether the text names the other side, or ends in a word only it can complete (``min_prefix`` letters)."""
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
                    parts.append(ids_array(self.index.by_text.get(spelled, [])))
        banned = np.concatenate(parts)
        return self._mask(vocab, banned) if len(banned) else None


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


def _trailing(run: re.Pattern[str], text: str) -> str:
    """The longest run of ``run``'s characters ending ``text`` (matched on the reversed text: a search for
    ``…*\\Z`` would try every start position)."""
    return run.match(text[::-1]).group()[::-1]
