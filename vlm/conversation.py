"""The records of an agent turn that the app shows and the audit log keeps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from data.model_view import model_pictures
from data.study import Volume
from experts.base import ExpertResult

__all__ = ["ToolCall", "AgentEvent", "AgentTurn", "Conversation", "study_volumes"]


@dataclass
class ToolCall:
    """One expert call in a turn: what the model asked for and what came back."""

    name: str
    arguments: dict[str, Any]
    result: ExpertResult | None = None
    error: str | None = None  # validation or expert error, shown to the model as a tool error
    seconds: float = 0.0
    raw: str = ""  # the model's text of the call (JSON in <tool_call> or a legacy trigger)
    repairs: list[str] = field(default_factory=list)  # arguments changed to what the question names (``vlm.call_repair``)


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
    intent: Any = None  # the parsed question (``vlm.intent.QuestionIntent``)
    routing: Any = None  # which model answered and why (``vlm.routing.RoutingDecision``); None when no routing is set up

    @property
    def answered_by(self) -> str:
        """``local`` or ``large`` (the model whose turn this is, ``vlm.routing``); "" when no routing is set up or no
        model wrote (a refusal, a header answer)."""
        return self.routing.answered_by if self.routing is not None else ""

    @property
    def escalation_reason(self) -> str:
        """Why the turn went to the large model, in words ("low confidence 0.41 < 0.60"); "" when it did not."""
        return self.routing.reason_text() if self.routing is not None and self.routing.escalated else ""


@dataclass
class Conversation:
    """One chat about one study: its volumes, the pictures the model sees, the history, the caches.

    volumes: name → ``Volume`` (e.g. ``{"CT": ct}`` or ``{"T1": .., "T1c": .., "T2": .., "FLAIR": ..}``).
    images: displayed slice(s), ``(H, W)`` or ``(H, W, 3)`` uint8; each is given to the model once, with
    the next question. messages: the history (role, content, and ``images`` for the pictures its
    ``<image>`` placeholders stand for). tool_calls: every expert call so far, with its result.
    cache_id: the key under which the backend keeps image features and the prefix KV cache.
    """

    volumes: dict[str, Volume] = field(default_factory=dict)
    images: list[np.ndarray] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    turns: list[AgentTurn] = field(default_factory=list)
    cache_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    images_shown: int = 0  # how many of ``images`` are already in the history
    shown_slice: int | None = None  # axial index (volume grid) of the slice on screen, for "in this slice" questions
    picture_slice: int | None = None  # axial index (volume grid) of the slice the model's pictures show
    primary: str | None = None  # name (in ``volumes``) of the series on screen

    @classmethod
    def from_study(cls, study: Any, slice_index: int | None = None, *, primary: str | None = None,
                   on_screen: bool = True) -> "Conversation":
        """A conversation on a ``Study``: its volumes by name (``study_volumes``) and the model's picture(s) of
        axial slice ``slice_index`` (default the middle one; ``data.model_view.model_pictures``, the pictures the
        model was trained on). primary: the name of the series on screen. on_screen: that slice is the one the
        clinician sees, so "in this slice" questions are about it (False while another plane is shown)."""
        volumes = study_volumes(study)
        if not volumes:
            return cls()
        pictures = model_pictures(volumes, slice_index, primary)
        return cls(volumes=volumes, images=pictures.as_list, picture_slice=pictures.slice_index,
                   shown_slice=pictures.slice_index if on_screen else None, primary=primary)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys(v.modality for v in self.volumes.values()))

    def chat_messages(self) -> list[dict[str, Any]]:
        """The history as plain ``{"role", "content"}`` dicts for a ``ChatBackend``."""
        return [{k: v for k, v in m.items() if k != "images"} for m in self.messages]

    def message_images(self) -> list[np.ndarray]:
        """The pictures of the history in placeholder order."""
        return [im for m in self.messages for im in m.get("images", ())]


def study_volumes(study: Any) -> dict[str, Volume]:
    """A ``Study``'s volumes by name: MR series by sequence role (``T1``, ``T1c``, ``T2``, ``FLAIR``), others by
    modality; repeated names get ``_2``, ``_3``…"""
    volumes: dict[str, Volume] = {}
    for series in study.series:
        v = series.volume
        name = v.sequence or series.modality or v.modality
        base, n = name, 2
        while name in volumes:
            name, n = f"{base}_{n}", n + 1
        volumes[name] = v
    return volumes
