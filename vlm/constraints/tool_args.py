"""``ToolCallConstraint``: while the model writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the
name stays among the offered experts and each argument with choices among the values ``policy.CALL_RULES`` allows
(the expert's JSON-schema ``enum``, narrowed to what the question names: ``policy.call_choices``).

The call's JSON is followed character by character (``CallState``, ``advance``): a streaming scanner written here
because the constraint needs a hashable position inside a partial JSON text (which string of which key is open), which
JSON libraries do not expose. A step's ban depends only on that position, so it is computed once per position and
tokenizer (``QuoteSets.bans``): inside an allowed value the tokens spelling its next characters are found through the
prefix index; elsewhere only the tokens that could reach an allowed value within themselves (those holding quotes or a
colon, a few per cent of a vocabulary) are followed through the scanner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from data.tool_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.constraints.masking import Ban, ConstraintError, GuardedProcessor
from vlm.constraints.policy import ARGUMENT_OBJECTS, CALL_RULES, CallSlot, first_rule
from vlm.constraints.vocabulary import RunningText

__all__ = ["CallState", "ToolCallConstraint"]

_SPACE = " \t\r\n"
_MISSING = object()
_OTHER_KEY = "\x00"  # the text of any key whose value the policy does not limit
_MEMO_LIMIT = 20_000  # positions kept per tokenizer before the memo starts over


class CallState(NamedTuple):
    """A position inside a call's JSON text. stack: the open containers, each ``(kind, path)`` (``{`` or ``[``; the
    keys from the call's object to it); mode: ``start`` (before the object), ``key``, ``colon``, ``value``, ``post``
    (after a value) or ``end`` (the object closed); key: the key whose value comes next; string: ``k`` / ``v`` inside a
    key / value string, else ""; text: that string so far (kept for keys and allowed-value strings); expert: the call's
    name once written."""

    stack: tuple[tuple[str, tuple[str, ...]], ...] = ()
    mode: str = "start"
    key: str = ""
    string: str = ""
    text: str = ""
    escape: bool = False
    expert: str = ""


class ToolCallConstraint(GuardedProcessor):
    """A ``transformers`` logits processor that keeps a tool call's expert name and argument values on
    ``call_arguments`` (expert → argument → allowed values; every expert named there may be called, and an argument
    not named there is free). Asked about the liver, ``"targets": "`` can only go on to spell ``liver``. Text outside
    ``<tool_call>`` is untouched. ``input_ids`` are the generated tokens (pass ``prompt_length`` with a text prompt).
    """

    name = "tool-call constraint"

    def __init__(self, tokenizer: Any, call_arguments: Mapping[str, Mapping[str, tuple[str, ...]]], prompt_length: int = 0, *,
                 running: dict[int, RunningText] | None = None, failures: list[str] | None = None) -> None:
        super().__init__(tokenizer, prompt_length, running, failures)
        self.offered = {e: {a: tuple(v) for a, v in table.items()} for e, table in call_arguments.items()}
        self._signature = tuple(sorted((e, tuple(sorted(t.items()))) for e, t in self.offered.items()))
        self._sets = self.index.quote_sets()
        self._slots: dict[tuple[tuple[str, ...], str], tuple[str, ...] | None] = {}
        self._keys: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
        self._bans: dict[tuple[CallState, int], Ban | None] = {}
        self._last: tuple[str, CallState | None] = ("", CallState())

    # ---- the policy at a position -----------------------------------------------------------------------------
    def values(self, path: tuple[str, ...], expert: str) -> tuple[str, ...] | None:
        """The values a string at ``path`` may take in a call to ``expert`` (``policy.CALL_RULES``); None: any."""
        if (path, expert) not in self._slots:
            slot = CallSlot(path, expert, self.offered)
            rule = first_rule(CALL_RULES, slot)
            self._slots[(path, expert)] = rule.effect(slot) if rule is not None else None
        return self._slots[(path, expert)]

    def state_of(self, call: str) -> CallState | None:
        """The position after ``call`` (the text since ``<tool_call>``); None when it already holds a value the
        policy does not allow."""
        seen, state = self._last
        if not (call.startswith(seen) and state is not None):
            seen, state = "", CallState()
        state = self._fold(state, call[len(seen):])
        self._last = (call, state)
        return state

    def advance(self, state: CallState, ch: str) -> CallState | None:
        """The position after one more character; None when that character leaves what the policy allows."""
        if state.string:
            return self._in_string(state, ch)
        if ch in _SPACE or state.mode == "end":
            return state
        if state.mode == "start":
            return state._replace(stack=(("{", ()),), mode="key", key="") if ch == "{" else state
        kind, path = state.stack[-1]
        if state.mode == "value":
            here = path + (state.key,) if kind == "{" else path
            if self.values(here, state.expert) is not None:  # an allowed-value slot: a string, or an array of them
                if ch == '"':
                    return state._replace(string="v", text="")
                if ch == "[" and kind == "{" and here != ("name",):
                    return state._replace(stack=state.stack + (("[", here),), mode="value", key="")
                return _pop(state) if ch == "]" and kind == "[" else None
            if ch == '"':
                return state._replace(string="v", text="")
            if ch in "{[":
                return state._replace(stack=state.stack + ((ch, here),), mode="key" if ch == "{" else "value", key="")
            return _pop(state) if ch in "]}" else state._replace(mode="post")  # a number, true / false / null
        if state.mode == "post" and kind == "[" and self.values(path, state.expert) is not None:
            if ch == ",":
                return state._replace(mode="value")
            return _pop(state) if ch == "]" else None
        if state.mode == "key":
            if ch == '"':
                return state._replace(string="k", text="")
            return _pop(state) if ch == "}" else state
        if state.mode == "colon":
            return state._replace(mode="value") if ch == ":" else state
        if ch == ",":  # post
            return state._replace(mode="key" if kind == "{" else "value", key="")
        return _pop(state) if ch in "}]" else state

    def _in_string(self, state: CallState, ch: str) -> CallState | None:
        kind, path = state.stack[-1]
        here = path + (state.key,) if kind == "{" else path
        allowed = self.values(here, state.expert) if state.string == "v" else None
        if state.escape:
            return state._replace(escape=False, text=self._key_text(state, ch) if state.string == "k" else state.text)
        if ch == "\\":
            return None if allowed is not None else state._replace(escape=True)
        if ch == '"':
            if state.string == "k":
                return state._replace(string="", text="", mode="colon", key=state.text)
            if allowed is not None and state.text not in allowed:
                return None
            expert = state.text if here == ("name",) else state.expert
            return state._replace(string="", text="", mode="post", expert=expert)
        if allowed is not None:
            text = state.text + ch
            return state._replace(text=text) if any(v.startswith(text) for v in allowed) else None
        if state.string == "k":
            return state._replace(text=self._key_text(state, ch))
        return state._replace(text=state.text + ch) if here == ("name",) else state

    def _key_text(self, state: CallState, ch: str) -> str:
        """A key's text after one more character; a key no limited value has is kept as one marker, so positions
        inside any such key are one position (its bans are found once)."""
        text = state.text + ch
        keys = self._slot_keys(state.stack[-1][1], state.expert)
        return text if any(k.startswith(text) for k in keys) else _OTHER_KEY

    def _fold(self, state: CallState | None, text: str) -> CallState | None:
        for ch in text:
            if state is None:
                return None
            state = self.advance(state, ch)
        return state

    # ---- the ban at a position --------------------------------------------------------------------------------
    def _banned(self, text: str, vocab: int) -> Ban | None:
        at = text.rfind(TOOL_CALL_OPEN)
        if at < 0 or text.rfind(TOOL_CALL_CLOSE) > at:
            return None
        state = self.state_of(text[at + len(TOOL_CALL_OPEN):])
        if state is None:
            raise ConstraintError("the tool call already holds a name or argument value outside the allowed ones "
                                  "(an earlier step went unconstrained); the call's arguments are checked when it runs.")
        if state.mode == "end":
            return None
        local = self._bans.get((state, vocab), _MISSING)
        if local is not _MISSING:
            return local
        key = (self._signature, state, vocab)  # shared by the constraints of every round over this tokenizer
        bans = self._sets.bans
        if key not in bans:
            if len(bans) > _MEMO_LIMIT:
                bans.clear()
            bans[key] = self._ban_at(state, vocab)
        self._bans[(state, vocab)] = bans[key]
        return bans[key]

    def _ban_at(self, state: CallState, vocab: int) -> Ban | None:
        kind, path = state.stack[-1] if state.stack else ("", ())
        here = path + (state.key,) if kind == "{" else path
        values = self.values(here, state.expert) if state.stack else None
        if state.string == "v" and values is not None:  # inside an allowed value: its next characters, or its close
            return self._only(vocab, self._spelling(state, values), f"{'/'.join(here)} towards {', '.join(values)}")
        in_slot = state.stack and ((state.mode == "value" and values is not None)
                                   or (kind == "[" and state.mode == "post" and self.values(path, state.expert) is not None))
        if in_slot:  # a value must open (or an array go on): the tokens starting with a quote, bracket or comma
            kept = [i for i in self._sets.structural.tolist() if self._fold(state, self.pieces[i]) is not None]
            return self._only(vocab, kept, f"{'/'.join(here)} value")
        # anywhere else a token reaches an allowed value only through quotes (or, before a value, a colon)
        candidates = self._sets.quoted_twice
        if state.string == "k" and state.escape:
            candidates = self._sets.quoted
        elif state.string == "k":  # with one quote a token closes the key, and reaches a value only if it is a slot's
            closing = [self._sets.closing_by_before.get(k[len(state.text):], []) for k in self._slot_keys(path, state.expert)
                       if k.startswith(state.text)]
            candidates = np.union1d(candidates, np.concatenate([np.asarray(c, dtype=np.int64) for c in closing] or [candidates[:0]]))
        elif state.mode == "colon" and self.values(path + (state.key,), state.expert) is not None:
            candidates = np.union1d(self._sets.colon, self._sets.quoted_twice)
        banned = [i for i in candidates.tolist() if self._fold(state, self.pieces[i]) is None]
        return self._mask(vocab, banned) if banned else None

    def _spelling(self, state: CallState, values: tuple[str, ...]) -> list[int]:
        """Ids continuing an allowed value's text (exact case), or closing it where it is complete."""
        idx, found = self.index, set()
        for v in values:
            if not v.startswith(state.text):
                continue
            rest = v[len(state.text):]
            for n in range(min(len(rest), idx.max_len) + 1):
                found.update(i for i in idx.by_text.get(rest[:n].lower(), ()) if self.pieces[i] == rest[:n])
            closed = self.advance(state._replace(text=v), '"')
            for i in self._sets.closing_by_before.get(rest, ()):
                piece = self.pieces[i]
                if self._fold(closed, piece[piece.find('"') + 1:]) is not None:
                    found.add(i)
        return sorted(found)

    def _slot_keys(self, path: tuple[str, ...], expert: str) -> tuple[str, ...]:
        """The keys of the object at ``path`` whose values the policy limits, or that hold such values
        (``arguments``)."""
        if (path, expert) not in self._keys:
            names = {"name"} | {a for table in self.offered.values() for a in table}
            limited = [p for p in [("name",), *((o, a) for o in ARGUMENT_OBJECTS for a in names)] if self.values(p, expert) is not None]
            self._keys[(path, expert)] = tuple(sorted({p[len(path)] for p in limited if len(p) > len(path) and p[:len(path)] == path}))
        return self._keys[(path, expert)]

    def _only(self, vocab: int, allowed: list[int], where: str) -> Ban | None:
        if not allowed:
            raise ConstraintError(f"no token of the vocabulary continues the tool call's {where}; "
                                  "this step is decoded unconstrained and the call's arguments are checked when it runs.")
        return self._mask(vocab, allowed=allowed)


def _pop(state: CallState) -> CallState:
    stack = state.stack[:-1]
    return state._replace(stack=stack, mode="post" if stack else "end", key="")
