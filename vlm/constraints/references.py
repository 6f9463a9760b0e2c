"""``ReferenceConstraint``: an answer's ``[[key]]`` references kept on the result fields its own sentence (or the
parsed question) names, by the rules of ``policy.REFERENCE_RULES``, over the vocabulary's prefix index."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from data.tool_text import REF_CLOSE, REF_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.constraints.masking import Ban, GuardedProcessor
from vlm.constraints.policy import (
    REFERENCE_RULES,
    AskedFacts,
    ReferenceContext,
    first_rule,
    key_patterns,
    normal_key,
)
from vlm.constraints.vocabulary import RunningText

__all__ = ["ReferenceConstraint"]

_PHRASE_END = re.compile(r"[.;,\n]\s|;|\]\]")


class ReferenceConstraint(GuardedProcessor):
    """A ``transformers`` logits processor that keeps a ``[[key]]`` reference on the structure its own
    sentence names: when the text just before the ``[[`` (since the last ``.``, ``;``, ``,`` or reference)
    names fields of the conversation's expert results (``keys``), the reference may spell only those
    fields ("The left kidney volume is [[" → ``left kidney volume``, never ``right kidney volume``).
    When the sentence names none of them (say, an organ no result measured) nothing is masked, so the
    agent still shows "(not in the expert result)" rather than another structure's value. Text outside
    references and inside tool calls is untouched. A reference that opens the answer takes its fields from
    ``answer_keys`` or from what the parsed question asks (``asked``, ``policy.AskedFacts``): the rules are
    ``policy.REFERENCE_RULES``. ``input_ids`` are the generated tokens (pass ``prompt_length`` with a text prompt).
    """

    name = "reference constraint"

    def __init__(self, tokenizer: Any, keys: Sequence[str], prompt_length: int = 0, *, asked: AskedFacts | None = None,
                 answer_keys: Sequence[str] = (), running: dict[int, RunningText] | None = None,
                 failures: list[str] | None = None) -> None:
        super().__init__(tokenizer, prompt_length, running, failures)
        self.asked = asked
        self.open, self.close = REF_OPEN, REF_CLOSE
        self.keys = sorted({normal_key(k) for k in keys}, key=len, reverse=True)
        self.answer_keys = {normal_key(k) for k in answer_keys} & set(self.keys)
        self._named = key_patterns(self.keys)
        self._allowed_memo: dict[str, frozenset[str]] = {}
        self._phrase_base = ("", 0)

    def allowed(self, lead: str) -> set[str]:
        """The keys a reference after ``lead`` may name (``policy.REFERENCE_RULES``, the first that applies); empty
        when nothing is kept (the sentence names no field)."""
        if lead not in self._allowed_memo:
            if len(self._allowed_memo) > 256:
                self._allowed_memo.clear()
            self._allowed_memo[lead] = frozenset(self._allowed(lead))
        return set(self._allowed_memo[lead])

    def context(self, lead: str) -> ReferenceContext:
        """Where a reference after ``lead`` opens, as the policy reads it."""
        context = ReferenceContext(self.keys, lead, "", self.asked, self.answer_keys, self._named)
        if not context.from_question:
            context.phrase = self._last_phrase(lead).lower()  # separators are caseless: the lead's last phrase, lower-cased
        return context

    def _allowed(self, lead: str) -> set[str]:
        situation = self.context(lead)
        rule = first_rule(REFERENCE_RULES, situation)
        return set(rule.effect(situation)) if rule is not None else set()

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

    def ok(self, partial: str, keys: set[str]) -> bool:
        """Whether the text after an open ``[[`` can still become (or already closes) one of ``keys``."""
        partial = partial.lower()
        end = partial.find(self.close)
        if end >= 0:
            return normal_key(partial[:end]) in keys and self.open not in partial[end:]
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
            if normal_key(p + before) in keys:
                found.update(ids)
        if p.endswith("]") and normal_key(p[:-1]) in keys:  # closed across the boundary: "[[liver]" + "]…"
            found.update(idx.close_start.tolist())
        return [i for i in found if self.ok(partial + self.pieces[i], keys)]
