"""What ``m3 serve-lm`` answers: a model's text as an OpenAI chat completion (content, ``tool_calls``, finish reason).

The model writes tool calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text (the agent's format,
parsed by ``vlm.tools.parse_tool_calls``). When the request offered tools, such calls leave the text and become
``tool_calls`` with fresh ids, ``finish_reason: "tool_calls"``, and ``content`` the text before the first call (null
when there is none) — what vLLM's ``hermes`` tool parser returns for the same text. A call that cannot be read
stays in ``content``, as vLLM leaves it. Text from a stop string on is cut (``finish_reason: "stop"``, the string in
``stop_reason`` as vLLM reports it); a generation that used all of ``max_tokens`` ends with ``"length"``.

``StreamedContent`` is the streaming side: it releases text as content only once it can no longer turn into a tool
call or a stop string.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data.tool_text import TOOL_CALL_OPEN
from vlm.tools import parse_tool_calls

__all__ = ["Completion", "complete", "first_stop", "StreamedContent", "tool_call_id"]


@dataclass
class Completion:
    """One choice of a chat completion. ``tool_calls`` are OpenAI objects (``id``, ``type``, ``function`` with
    ``arguments`` as a JSON string)."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"  # stop | length | tool_calls
    stop_reason: str | None = None  # the stop string that ended the text (vLLM's field), else None

    def message(self) -> dict[str, Any]:
        """The assistant message of a non-streamed response."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def tool_call_id() -> str:
    """A fresh tool-call id, shaped like OpenAI's (``call_`` and 24 hex digits)."""
    return "call_" + secrets.token_hex(12)


def first_stop(text: str, stop: Sequence[str]) -> tuple[int, str | None]:
    """(index, stop string) of the earliest stop string in ``text``; ``(len(text), None)`` when none occurs."""
    best, which = len(text), None
    for s in stop:
        i = text.find(s)
        if 0 <= i < best:
            best, which = i, s
    return best, which


def complete(text: str, *, stop: Sequence[str] = (), tools_offered: bool = False, parallel_tool_calls: bool = True,
             length_reached: bool = False) -> Completion:
    """The completion of the generated ``text``. ``length_reached``: the generation used all of ``max_tokens``."""
    end, stop_reason = first_stop(text, stop)
    text = text[:end]
    if tools_offered and TOOL_CALL_OPEN in text:
        _, calls = parse_tool_calls(text)
        calls = [c for c in calls if c.raw.lstrip().startswith(TOOL_CALL_OPEN)]  # legacy VILA triggers stay text
        if calls and all(c.error is None for c in calls):
            if not parallel_tool_calls:
                calls = calls[:1]
            before = text[: text.find(TOOL_CALL_OPEN)]
            return Completion(
                content=before or None,
                tool_calls=[{"id": tool_call_id(), "type": "function",
                             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls],
                finish_reason="tool_calls", stop_reason=stop_reason)
    if stop_reason is not None:
        return Completion(text, finish_reason="stop", stop_reason=stop_reason)
    return Completion(text, finish_reason="length" if length_reached else "stop")


class StreamedContent:
    """Feeds a model's text pieces in; ``feed`` returns the content that is safe to send now.

    Text is held back from a tool-call opener on (when tools were offered: the call is sent as ``tool_calls`` at the
    end) and from a stop string on; a tail that could still grow into either is held until the next piece.
    ``stopped`` turns true once a stop string has appeared: the caller ends the generation there."""

    def __init__(self, stop: Sequence[str], tools_offered: bool) -> None:
        self.stop = [s for s in stop if s]
        self._markers = self.stop + ([TOOL_CALL_OPEN] if tools_offered else [])
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        self.stopped = first_stop(self.text, self.stop)[1] is not None
        end, which = first_stop(self.text, self._markers)
        if which is None:
            end -= _partial_marker_tail(self.text, self._markers)
        return self._release(end)

    def finish(self, completion: Completion) -> str:
        """The content not yet sent, once the whole answer is known."""
        return self._release(len(completion.content or ""), completion.content or "")

    def _release(self, end: int, source: str | None = None) -> str:
        source = self.text if source is None else source
        if end <= self.sent:
            return ""
        out, self.sent = source[self.sent:end], end
        return out


def _partial_marker_tail(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a marker (it may complete with the next piece)."""
    longest = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:k]):
                longest = k
                break
    return longest
