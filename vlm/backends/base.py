"""What the agent needs from a language model: a chat backend that streams text.

Implementations: ``vlm.backends.hf_vlm`` (m3's own model and VILA-layout checkpoints, in process),
``vlm.backends.image_text`` (any local ``AutoModelForImageTextToText``), ``vlm.backends.openai_api``
(a remote OpenAI-compatible server such as vLLM; images and text leave the process, PHI never does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

__all__ = ["ChatBackend", "GenerationConfig", "BackendInfo"]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    # result fields a ``[[key]]`` reference may name (``data.tool_text.reference_keys``); in-process backends
    # decode references only to these keys, remote ones ignore it; empty: references are not constrained
    references: tuple[str, ...] = ()
    # the one body side ("left" / "right") the user's question names; in-process backends then decode no
    # tool-call argument naming the other side; "": calls are not constrained
    call_side: str = ""
    # the one side this turn's expert calls measured; in-process backends then decode no answer text naming
    # the other side (the results hold nothing of it); "": answers are not constrained
    answer_side: str = ""
    # the user's question: a reference that opens the answer ("[[" with no words before it) names a field
    # the question names ("Is there edema?" → ``edema?``, ``edema volume``); "": no such fallback
    question: str = ""
    # the result fields that answer the question (the agent's choice): a reference that opens the answer names
    # only those of them that are in ``references``; none of them there: the ``question`` fallback above
    answer_keys: tuple[str, ...] = ()


@dataclass
class BackendInfo:
    name: str  # model name for the banner and the audit log
    version: str = ""  # weights checksum or tag
    takes_images: bool = True
    model_card: str = ""  # intended use, training data, metrics (Markdown)


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model. ``messages`` are OpenAI/HF-style dicts (role: system|user|assistant|tool, content);
    ``images`` are the pictures referenced by ``<image>`` placeholders in order, as ``(H, W)`` or
    ``(H, W, 3)`` uint8 arrays; ``tools`` are JSON tool schemas (``Expert.tool_schema()``)."""

    info: BackendInfo

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[np.ndarray] | None = None,
        tools: list[dict[str, Any]] | None = None,
        config: GenerationConfig | None = None,
        cache_key: str | None = None,  # a conversation id: reuse image features and the prefix KV cache
    ) -> Iterator[str]:
        """Yield the answer's text pieces as they are decoded."""
        ...
