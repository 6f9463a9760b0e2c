"""The agent context: the system prompt and the tools a model is given, built in one place from the model's config.

Training-data rendering (``vlm.train``), serving and evaluation (``vlm.agent``, through ``vlm.study_chat``) and
calibration (``vlm.compress``) all take them from ``agent_context``, so a model is calibrated and served with the
context it was trained on.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AGENT_SYSTEM_PROMPT", "AgentContext", "agent_context", "model_config_of"]

AGENT_SYSTEM_PROMPT = (
    "You are m3, a medical imaging assistant for clinicians. Look at the images and answer briefly. "
    "When a question needs a measurement, a segmentation or a finding probability, call the matching "
    "expert and answer from its result; quote its numbers with their units and never invent a number. "
    "Output is for research and decision support, not a diagnosis."
)


@dataclass(frozen=True)
class AgentContext:
    """What a conversation is rendered with: ``system_prompt`` (the first message) and ``tools`` (JSON tool
    definitions for ``apply_chat_template(..., tools=...)``, one per expert offered, in order)."""

    system_prompt: str
    tools: list[dict[str, Any]] = field(default_factory=list)

    def system_messages(self) -> list[dict[str, str]]:
        """The system message a conversation opens with (none for an empty prompt)."""
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []


def agent_context(config: Any = None, experts: Iterable[Any] | None = None) -> AgentContext:
    """The context of a model with ``config`` (an ``M3Config``, a ``config.json`` mapping, or None for a model without
    one, such as a remote server): the config's ``system_prompt``, else ``AGENT_SYSTEM_PROMPT``; tools: the tool
    definitions of ``experts`` (``Expert`` objects, or classes: no weights load), by default the built-in experts'
    classes in registry order."""
    prompt = config.get("system_prompt") if isinstance(config, Mapping) else getattr(config, "system_prompt", None)
    return AgentContext(prompt or AGENT_SYSTEM_PROMPT, [_tool(e) for e in (_builtin_classes() if experts is None else experts)])


def model_config_of(backend: Any) -> Any:
    """The config of the model a chat backend runs in process (``backend.model.config``); None for others."""
    return getattr(getattr(backend, "model", None), "config", None)


def _tool(expert: Any) -> dict[str, Any]:
    """An expert's tool definition (``Expert.tool_schema``); a class gives the same from its attributes."""
    if isinstance(expert, type):
        return {"type": "function", "function": {"name": expert.name, "description": expert.description,
                                                 "parameters": dict(expert.parameters)}}
    return expert.tool_schema()


def _builtin_classes() -> list[type]:
    from experts.registry import BUILTIN_EXPERTS

    out = []
    for target in BUILTIN_EXPERTS.values():
        module, _, name = target.partition(":")
        out.append(getattr(importlib.import_module(module), name))
    return out
