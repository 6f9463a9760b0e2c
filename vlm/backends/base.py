"""What the agent needs from a language model: a chat backend that streams text.

Implementations: ``vlm.backends.hf_vlm`` (m3's own model and VILA-layout checkpoints, in process),
``vlm.backends.image_text`` (any local ``AutoModelForImageTextToText``), ``vlm.backends.openai_api``
(a remote OpenAI-compatible server such as vLLM; images and text leave the process, PHI never does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # the constraints module loads torch; a remote-only backend never needs it
    from vlm.constraints import DecodingConstraints

__all__ = ["ChatBackend", "GenerationConfig", "BackendInfo", "TokenLogprobs"]


@dataclass
class GenerationConfig:
    """How to sample: at most ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, and ``stop`` strings.
    What the answer is kept on travels apart, as ``DecodingConstraints``."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)


@dataclass
class BackendInfo:
    name: str  # model name for the banner and the audit log
    version: str = ""  # weights checksum or tag
    takes_images: bool = True
    model_card: str = ""  # intended use, training data, metrics (Markdown)
    remote: bool = False  # the model runs elsewhere (an OpenAI-compatible server): decoding constraints cannot reach it
    token_logprobs: bool = False  # ``stream_chat`` takes ``logprobs=TokenLogprobs()`` and fills it (``TokenLogprobs``)


@dataclass
class TokenLogprobs:
    """The natural-log probabilities of the tokens a backend generated, in order, over one or more generations.

    A backend whose ``info.token_logprobs`` is true takes one as ``stream_chat(..., logprobs=...)`` and appends to
    ``values`` as it decodes (the model's own distribution, before sampling settings and decoding constraints); when
    it was asked and could not say (a server that refuses or omits log-probabilities) it sets ``available`` to False.
    A backend that does not take one is never given one: its confidence is "not available", not 1.
    """

    values: list[float] = field(default_factory=list)
    available: bool = True

    def extend(self, logprobs: Any) -> None:
        """Append log-probabilities (natural log, <= 0); a missing one (None) makes the whole record unavailable."""
        for value in logprobs:
            if value is None:
                self.available = False
            else:
                self.values.append(float(value))

    def probability(self, statistic: str = "mean") -> float | None:
        """The tokens' ``mean`` probability or their ``min`` (the least sure token), in [0, 1]; None when not
        available or no token was generated."""
        if not self.available or not self.values:
            return None
        if statistic == "mean":
            return sum(math.exp(v) for v in self.values) / len(self.values)
        if statistic == "min":
            return math.exp(min(self.values))
        raise ValueError(f"statistic must be 'mean' or 'min', got {statistic!r}.")


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model. ``messages`` are OpenAI/HF-style dicts (role: system|user|assistant|tool, content);
    ``images`` are the pictures referenced by ``<image>`` placeholders in order, as ``(H, W)`` or
    ``(H, W, 3)`` uint8 arrays; ``tools`` are JSON tool schemas (``Expert.tool_schema()``); ``constraints``
    (``vlm.constraints.DecodingConstraints``) are what the decoding is kept on: an in-process backend applies them and
    records their failures on them, a remote one (``info.remote``) ignores them. A backend with ``info.token_logprobs``
    also takes ``logprobs`` (a ``TokenLogprobs`` it fills); the others are never passed one."""

    info: BackendInfo

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[np.ndarray] | None = None,
        tools: list[dict[str, Any]] | None = None,
        config: GenerationConfig | None = None,
        cache_key: str | None = None,  # a conversation id: reuse image features and the prefix KV cache
        constraints: DecodingConstraints | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text pieces as they are decoded."""
        ...
