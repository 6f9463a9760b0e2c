"""The records of an agent turn that the app shows and the audit log keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from experts.base import ExpertResult

__all__ = ["ToolCall", "AgentEvent", "AgentTurn"]


@dataclass
class ToolCall:
    """One expert call in a turn: what the model asked for and what came back."""

    name: str
    arguments: dict[str, Any]
    result: ExpertResult | None = None
    error: str | None = None  # validation or expert error, shown to the model as a tool error
    seconds: float = 0.0
    raw: str = ""  # the model's text of the call (JSON in <tool_call> or a legacy trigger)


@dataclass
class AgentEvent:
    """A streamed event: a piece of answer text, a tool call starting, its result, or the end."""

    kind: Literal["token", "tool_call", "tool_result", "done", "error"]
    text: str = ""
    tool_call: ToolCall | None = None
    turn: "AgentTurn | None" = None


@dataclass
class AgentTurn:
    """A finished turn: the answer, the calls it rests on, pictures for the app, safety flags."""

    question: str
    answer: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    overlays: list[np.ndarray] = field(default_factory=list)  # RGB (H, W, 3) uint8
    flags: list[str] = field(default_factory=list)  # e.g. "ungrounded number: 12.3"
    rounds: int = 0
    seconds: float = 0.0
