"""The text contract between experts and the language model: result records and the one text form of a
tool call and of a tool result, used by the training-data generators and at inference alike.

It lives in ``data`` so the generators (``data.instructions``) and the experts share it without an arrow
from ``data`` to ``experts``; ``experts.base`` builds ``ExpertResult`` on ``ToolResult``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "Measurement",
    "Finding",
    "ToolResult",
    "format_tool_result",
    "format_tool_error",
    "format_tool_call",
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


@dataclass
class Measurement:
    """A number with its unit, e.g. ``Measurement("liver", "volume", 1523.4, "mL")``."""

    structure: str
    quantity: str  # volume | largest diameter | count | ratio ...
    value: float
    unit: str

    def text(self) -> str:
        if self.unit in ("count", ""):
            return f"{self.structure} {self.quantity}: {self.value:.0f}"
        return f"{self.structure} {self.quantity}: {self.value:.1f} {self.unit}"


@dataclass
class Finding:
    """A labelled finding: present or not, with a probability when the expert gives one."""

    label: str
    present: bool
    probability: float | None = None
    threshold: float | None = None


@dataclass
class ToolResult:
    """What the language model is told of an expert run: name, arguments, findings, measurements."""

    expert: str
    arguments: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


def format_tool_result(result: ToolResult) -> str:
    """The ``tool`` message text of a result (compact JSON: small models have short contexts)."""
    body: dict[str, Any] = {"expert": result.expert}
    if result.findings:
        body["findings"] = {
            f.label: ("yes" if f.present else "no") + (f" ({f.probability:.2f})" if f.probability is not None else "")
            for f in result.findings
        }
    if result.measurements:
        body["measurements"] = [m.text() for m in result.measurements]
    return json.dumps(body, ensure_ascii=False)


def format_tool_error(name: str, error: str) -> str:
    """The ``tool`` message text of a call that failed (bad arguments, an expert error)."""
    return json.dumps({"expert": name or "unknown", "error": error}, ensure_ascii=False)


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The canonical text of a call, as the model writes it and the chat template renders it."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + TOOL_CALL_CLOSE
