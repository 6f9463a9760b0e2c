"""The records of an agent turn that the app shows and the audit log keeps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from data.study import Volume
from experts.base import ExpertResult

__all__ = ["ToolCall", "AgentEvent", "AgentTurn", "Conversation", "slice_image"]


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

    @classmethod
    def from_study(cls, study: Any, images: list[np.ndarray] | None = None) -> "Conversation":
        """Volumes of a ``Study`` by name (MR by sequence, else modality), and its middle slice (the slice
        on screen) unless ``images`` are given."""
        volumes: dict[str, Volume] = {}
        for series in study.series:
            v = series.volume
            name = v.sequence or series.modality or v.modality
            base, n = name, 2
            while name in volumes:
                name, n = f"{base}_{n}", n + 1
            volumes[name] = v
        shown = None
        if images is None and volumes:  # the middle slice, which "in this slice" questions are then about
            first = next(iter(volumes.values()))
            images, shown = [slice_image(first)], (None if first.is_2d else first.shape[2] // 2)
        return cls(volumes=volumes, images=list(images or []), shown_slice=shown)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys(v.modality for v in self.volumes.values()))

    def chat_messages(self) -> list[dict[str, Any]]:
        """The history as plain ``{"role", "content"}`` dicts for a ``ChatBackend``."""
        return [{k: v for k, v in m.items() if k != "images"} for m in self.messages]

    def message_images(self) -> list[np.ndarray]:
        """The pictures of the history in placeholder order."""
        return [im for m in self.messages for im in m.get("images", ())]


def slice_image(volume: Volume, index: int | None = None) -> np.ndarray:
    """An axial slice as a displayable ``(rows, cols)`` (or ``(rows, cols, 3)``) uint8 picture.

    index: slice ``k`` (default the middle one). Intensities use the volume's window when it has one,
    else its 1st–99th percentiles.
    """
    k = volume.shape[2] // 2 if index is None else index
    plane = volume.array[:, :, k]
    if plane.ndim == 3:  # colour (I, J, 3) → (rows, cols, 3)
        return np.ascontiguousarray(np.transpose(plane, (1, 0, 2)).astype(np.uint8))
    plane = plane.T.astype(np.float32)  # array is [column, row]
    if volume.window is not None:
        centre, width = volume.window
        lo, hi = centre - width / 2, centre + width / 2
    else:
        lo, hi = np.percentile(plane, [1, 99]) if plane.size else (0.0, 1.0)
    scaled = (np.clip(plane, lo, hi) - lo) / max(float(hi - lo), 1e-6)
    return (scaled * 255).round().astype(np.uint8)
