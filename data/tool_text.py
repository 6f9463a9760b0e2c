"""The text contract between experts and the language model: result records and the one text form of a
tool call and of a tool result, used by the training-data generators and at inference alike.

A result's facts are its field table (``ToolResult.fields()``, ``data.result_fields``): the ``tool`` message text
(``format_tool_result``) and the values of an answer's ``[[key]]`` references (``resolve_references``) both come from
it. ``parse_tool_result`` reads a tool message back only for callers that hold nothing but text.

It lives in ``data`` so the generators (``data.instructions``) and the experts share it without an arrow
from ``data`` to ``experts``; ``experts.base`` builds ``ExpertResult`` on ``ToolResult``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from data.result_fields import IN_SLICE_WORDS, ResultField, ResultFields, fields_from_text, result_fields, size_category

__all__ = [
    "fields_of",
    "Measurement",
    "Finding",
    "ToolResult",
    "ResultField",
    "ResultFields",
    "format_tool_result",
    "format_tool_error",
    "format_tool_call",
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
    "REF_OPEN",
    "REF_CLOSE",
    "value_reference",
    "resolve_references",
    "reference_keys",
    "parse_tool_result",
    "size_category",
    "IN_SLICE_WORDS",
    "UNRESOLVED",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# An answer may name a tool-result field instead of copying its value: "[[liver volume]]" is replaced by
# "1253.3 mL" from the conversation's tool results (``resolve_references``), so a number shown to the
# user is always the expert's own.
REF_OPEN, REF_CLOSE = "[[", "]]"
_REF = re.compile(r"\[\[([^\[\]]{1,80})\]\]")
UNRESOLVED = "(not in the expert result)"


@dataclass
class Measurement:
    """A number with its unit, e.g. ``Measurement("liver", "volume", 1523.4, "mL")``."""

    structure: str
    quantity: str  # volume | largest diameter | count | ratio ...
    value: float
    unit: str

    @property
    def name(self) -> str:
        """The field it is reported as: "liver volume"."""
        return f"{self.structure} {self.quantity}"

    def value_text(self) -> str:
        """The value as stated: "1523.4 mL"; a count, or a number without unit, as a whole number ("2")."""
        if self.unit in ("count", ""):
            return f"{self.value:.0f}"
        return f"{self.value:.1f} {self.unit}"

    def text(self) -> str:
        """"liver volume: 1523.4 mL"."""
        return f"{self.name}: {self.value_text()}"


@dataclass
class Finding:
    """A labelled finding: present or not, with a probability when the expert gives one."""

    label: str
    present: bool
    probability: float | None = None
    threshold: float | None = None

    def verdict(self) -> str:
        """The finding as stated: "yes (0.87)", "no"."""
        return ("yes" if self.present else "no") + (f" ({self.probability:.2f})" if self.probability is not None else "")


@dataclass
class ToolResult:
    """What the language model is told of an expert run: name, arguments, findings, measurements."""

    expert: str
    arguments: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    def fields(self) -> ResultFields:
        """The result's field table (key → value with unit, probability, provenance), built once and rebuilt only
        when the expert name, findings or measurements have changed since."""
        state = (self.expert, [(f.label, f.present, f.probability) for f in self.findings],
                 [(m.structure, m.quantity, m.value, m.unit) for m in self.measurements])
        held = self.__dict__.get("_fields")
        if held is None or held[0] != state:
            table = result_fields(self.expert, {f.label: f.verdict() for f in self.findings},
                                  tuple((m.name, m.value_text()) for m in self.measurements))
            held = self.__dict__["_fields"] = (state, table)
        return held[1]


def format_tool_result(result: ToolResult) -> str:
    """The ``tool`` message text of a result (compact JSON: small models have short contexts), from its field table."""
    return result.fields().tool_text()


def format_tool_error(name: str, error: str) -> str:
    """The ``tool`` message text of a call that failed (bad arguments, an expert error)."""
    return json.dumps({"expert": name or "unknown", "error": error}, ensure_ascii=False)


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The canonical text of a call, as the model writes it and the chat template renders it."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + TOOL_CALL_CLOSE


def value_reference(key: str) -> str:
    """The reference an answer writes for a tool-result field: ``[[key]]``."""
    return f"{REF_OPEN}{key}{REF_CLOSE}"


def resolve_references(text: str, sources: Sequence[ToolResult | ResultFields | str]) -> tuple[str, list[str]]:
    """Replace each ``[[key]]`` in ``text`` by the value it names in the conversation's results (``sources``, oldest
    first: ``ToolResult`` / ``ExpertResult`` objects, their ``fields()``, or, for text-only callers, ``tool`` message
    texts); the latest result holding the key wins. Returns the text and the keys no result holds (written as
    "(not in the expert result)"), plus "malformed reference" when an unpaired ``[[`` or ``]]`` was dropped.

    The keys and their values are the result's field table (``data.result_fields``): a measurement ("liver volume" →
    "1253.3 mL"); a counted structure ("liver tumor" → "2 found, volume 12.3 mL, largest diameter 25.1 mm" or "none
    found"); a finding ("cardiomegaly" → "present (probability 0.87)"); a finding asked as a closed question
    ("cardiomegaly?" → "yes (probability 0.87)"); a measured structure ("whole tumor" → "volume 52.1 mL, largest
    diameter 40.2 mm"); a size ("liver tumor in this slice size" → "large (largest diameter 34.2 mm)"); a side
    ("kidney cyst in this slice side" → "right"); the last words of present findings ("hemisphere" → "left
    hemisphere"); a normality ("cardiomegaly normal?", "normal?"); a paired organ compared ("larger kidney"); and the
    findings as a report states them: "positive findings", "negative findings", "impression".
    """
    tables = [fields_of(s) for s in reversed(list(sources))]
    missing: list[str] = []

    def sub(match: re.Match) -> str:
        key = match.group(1)
        for table in tables:
            value = table.value(key)
            if value is not None:
                return value
        missing.append(key.strip())
        return UNRESOLVED

    text = _REF.sub(sub, text)
    if REF_OPEN in text or REF_CLOSE in text:  # a reference the model did not finish: drop the marks, say so
        missing.append("malformed reference")
        text = text.replace(REF_OPEN, "").replace(REF_CLOSE, "")
    return text, missing


def reference_keys(sources: Sequence[ToolResult | ResultFields | str]) -> list[str]:
    """The keys the model is offered as references by these results (normalised, lower case; each result's
    ``ResultFields.offered``), e.g. ``["liver volume", "liver", "liver tumor count", "liver tumor", …]``."""
    keys: dict[str, None] = {}
    for source in sources:
        keys.update(dict.fromkeys(fields_of(source).offered))
    return list(keys)


def parse_tool_result(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """A ``format_tool_result`` text back to ``(measurements, findings)``: ``{"liver volume": "1253.3 mL"}``
    and ``{"cardiomegaly": "yes (0.87)"}``; ``({}, {})`` for anything else (an error, other JSON). For text-only
    callers (evaluation baselines); the agent reads its results' ``fields()``."""
    table = fields_from_text(text)
    measurements = {_norm(name): value.strip() for name, value in table.measurements}
    findings = {_norm(label): verdict for label, verdict in table.findings}
    return measurements, findings


def fields_of(source: ToolResult | ResultFields | str) -> ResultFields:
    """The field table of a result, whichever form the caller holds it in (object, table, or ``tool`` message text)."""
    if isinstance(source, ResultFields):
        return source
    if isinstance(source, ToolResult):
        return source.fields()
    return fields_from_text(source)


def _norm(key: str) -> str:
    return " ".join(key.lower().split())
