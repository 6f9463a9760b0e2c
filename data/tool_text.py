"""The text contract between experts and the language model: result records and the one text form of a
tool call and of a tool result, used by the training-data generators and at inference alike.

It lives in ``data`` so the generators (``data.instructions``) and the experts share it without an arrow
from ``data`` to ``experts``; ``experts.base`` builds ``ExpertResult`` on ``ToolResult``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = [
    "Measurement",
    "Finding",
    "ToolResult",
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
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# An answer may name a tool-result field instead of copying its value: "[[liver volume]]" is replaced by
# "1253.3 mL" from the conversation's tool results (``resolve_references``), so a number shown to the
# user is always the expert's own.
REF_OPEN, REF_CLOSE = "[[", "]]"
_REF = re.compile(r"\[\[([^\[\]]{1,80})\]\]")
UNRESOLVED = "(not in the expert result)"
IN_SLICE_WORDS = " in this slice"


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


def size_category(diameter_mm: float) -> str:
    """small (< 10 mm), medium (10–30 mm) or large (> 30 mm): how a lesion's size is named in questions and answers."""
    return "small" if diameter_mm < 10.0 else ("medium" if diameter_mm <= 30.0 else "large")


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


def value_reference(key: str) -> str:
    """The reference an answer writes for a tool-result field: ``[[key]]``."""
    return f"{REF_OPEN}{key}{REF_CLOSE}"


def parse_tool_result(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """A ``format_tool_result`` text back to ``(measurements, findings)``: ``{"liver volume": "1253.3 mL"}``
    and ``{"cardiomegaly": "yes (0.87)"}``; ``({}, {})`` for anything else (an error, other JSON)."""
    try:
        body = json.loads(text[text.find("{"):]) if "{" in text else None
    except json.JSONDecodeError:
        return {}, {}
    if not isinstance(body, dict):
        return {}, {}
    measurements = {}
    for item in body.get("measurements") or []:
        key, sep, value = str(item).rpartition(": ")
        if sep:
            measurements[_norm(key)] = value.strip()
    findings = {_norm(k): str(v) for k, v in (body.get("findings") or {}).items()} if isinstance(body.get("findings"), dict) else {}
    return measurements, findings


def resolve_references(text: str, tool_texts: Sequence[str]) -> tuple[str, list[str]]:
    """Replace each ``[[key]]`` in ``text`` by the value it names in the tool results (the latest result
    naming it wins); returns the text and the keys no result holds (written as "(not in the expert result)"),
    plus "malformed reference" when an unpaired ``[[`` or ``]]`` was dropped.

    A key is, in this order: a measurement ("liver volume" → "1253.3 mL"); a counted structure ("liver
    tumor" → "2 found, volume 12.3 mL, largest diameter 25.1 mm" or "none found"); a finding
    ("cardiomegaly" → "present (probability 0.87)" / "not present (probability 0.12)"); a finding asked
    as a closed question ("cardiomegaly?" → "yes (probability 0.87)" / "no (probability 0.12)"); a measured
    structure ("whole tumor" → "volume 52.1 mL, largest diameter 40.2 mm"); a size ("liver tumor in this
    slice size" → "large (largest diameter 34.2 mm)", from "<x> largest diameter" by ``size_category``); a side
    ("kidney cyst in this slice side" → "right", from the present findings "<x> on the <side>"); the last word of present
    findings ("hemisphere" → "left hemisphere"); or, for a result with findings, the findings as a
    report states them: "positive findings" ("cardiomegaly (0.87), nodule (0.64)" or "none"),
    "negative findings" (the others, same form) and "impression" ("Cardiomegaly; nodule." or "No
    finding above the expert's thresholds.").
    """
    parsed = [parse_tool_result(t) for t in reversed(list(tool_texts))]
    missing: list[str] = []

    def sub(match: re.Match) -> str:
        key = _norm(match.group(1))
        for measurements, findings in parsed:
            value = _resolve(key, measurements, findings)
            if value is not None:
                return value
        missing.append(match.group(1).strip())
        return UNRESOLVED

    text = _REF.sub(sub, text)
    if REF_OPEN in text or REF_CLOSE in text:  # a reference the model did not finish: drop the marks, say so
        missing.append("malformed reference")
        text = text.replace(REF_OPEN, "").replace(REF_CLOSE, "")
    return text, missing


def reference_keys(tool_texts: Sequence[str]) -> list[str]:
    """Every key ``resolve_references`` can fill from these tool results (normalised, lower case), e.g.
    ``["liver volume", "liver", "liver tumor count", "liver tumor", …]``: what a reference may name."""
    keys: dict[str, None] = {}
    for measurements, findings in (parse_tool_result(t) for t in tool_texts):
        candidates = list(measurements) + list(findings)
        for k in measurements:  # structures: "liver tumor largest diameter" → "liver", "liver tumor", …
            words = k.split()
            candidates += [" ".join(words[:i]) for i in range(1, len(words))]
        candidates += [k[: -len(" largest diameter")] + " size" for k in measurements if k.endswith(" largest diameter")]
        candidates += [k.split(" on the ")[0] + " side" for k in findings if " on the " in k]
        candidates += [k.split()[-1] for k in findings] + [k + "?" for k in findings] + (list(_FINDING_LISTS) if findings else [])
        candidates += [k + " normal?" for k in findings if not _descriptive(k)] + (["normal?"] if findings else [])
        candidates += [f"{w} {p}" for p in _PAIRS for w in ("larger", "smaller")]
        for key in candidates:
            if key not in keys and _resolve(key, measurements, findings) is not None:
                keys[key] = None
    return list(keys)


def _resolve(key: str, measurements: dict[str, str], findings: dict[str, str]) -> str | None:
    if key in measurements:
        return measurements[key]
    derived = _derived(key, measurements, findings)
    if derived is not None:
        return derived
    if key.endswith(" size") and measurements.get(key[:-5] + " largest diameter", "").endswith(" mm"):
        diameter = measurements[key[:-5] + " largest diameter"]
        try:
            return f"{size_category(float(diameter[:-3]))} (largest diameter {diameter})"
        except ValueError:
            return None
    if key.endswith(" side"):
        sides = [k[len(key) + 3:] for k, v in findings.items() if k.startswith(key[:-5] + " on the ") and v.startswith("yes")]
        if sides:
            return " and ".join(sides)
        hemispheres = [k for k, v in findings.items() if k.endswith(" hemisphere") and v.startswith("yes")]
        if hemispheres and key[:-5] in findings:  # a brain tumour's side is its hemisphere
            return " and ".join(h.split()[0] for h in hemispheres) + f" ({' and '.join(hemispheres)})"
    own = {k[len(key) + 1:]: v for k, v in measurements.items() if k.startswith(key + " ")}
    if "count" in own:
        n = own.pop("count")
        if n in ("0", "0.0"):
            return "none found"
        return f"{n} found" + "".join(f", {q} {v}" for q, v in own.items())
    asked = key.endswith("?")  # "pneumothorax?": the yes / no answer to a closed question on that finding
    if asked:
        key = key[:-1].rstrip()
    if key in findings:
        verdict = findings[key]
        yes = verdict.startswith("yes")
        word = ("yes" if yes else "no") if asked else ("present" if yes else "not present")
        prob = verdict[verdict.find("(") + 1:verdict.find(")")] if "(" in verdict else ""
        return f"{word} (probability {prob})" if prob else word
    if asked:
        return None
    if own:
        return ", ".join(f"{q} {v}" for q, v in own.items())
    present = [k for k, v in findings.items() if k.endswith(" " + key) and v.startswith("yes")]
    if present:
        return present[0]
    if findings and key in _FINDING_LISTS:
        return _finding_list(key, findings)
    return None


_FINDING_LISTS = ("positive findings", "negative findings", "impression")
_PAIRS = ("kidney", "lung")


def _derived(key: str, measurements: dict[str, str], findings: dict[str, str]) -> str | None:
    """Keys that answer a question's form rather than name one field: "cardiomegaly normal?" (the reverse
    polarity of "cardiomegaly?"), "normal?" (the whole study), "larger kidney" / "smaller lung" (a paired organ's
    two volumes compared), and "liver tumor?" for an expert that counts a lesion instead of scoring it."""
    if key == "normal?" and findings:
        abnormal = {k: v for k, v in findings.items() if not _descriptive(k)}
        present = [k for k, v in abnormal.items() if v.startswith("yes")]
        return ("no (" + _finding_list("positive findings", abnormal) + ")") if present else \
            "yes (no finding above the expert's thresholds)"
    if key.endswith(" normal?"):
        name = key[: -len(" normal?")]
        verdict = _resolve(name + "?", measurements, findings)
        if verdict is None:
            return None
        yes = verdict.startswith("yes")
        detail = verdict[verdict.find("(") + 1:verdict.rfind(")")] if "(" in verdict else ""
        return ("no" if yes else "yes") + f" ({name} {'present' if yes else 'not present'}" + (f", {detail}" if detail else "") + ")"
    words = key.split()
    if len(words) == 2 and words[0] in ("larger", "smaller") and words[1] in _PAIRS:
        left, right = measurements.get(f"left {words[1]} volume"), measurements.get(f"right {words[1]} volume")
        try:
            lv, rv = float(left.split()[0]), float(right.split()[0])  # type: ignore[union-attr]
        except (AttributeError, ValueError, IndexError):
            return None
        side = ("left" if lv > rv else "right") if words[0] == "larger" else ("left" if lv < rv else "right")
        return f"the {side} {words[1]} (left {left}, right {right})"
    if key.endswith("?") and key[:-1] in findings and f"{key[:-1]} count" in measurements and "(" not in findings[key[:-1]]:
        count = _resolve(key[:-1], measurements, findings)
        return ("yes" if findings[key[:-1]].startswith("yes") else "no") + (f" ({count})" if count else "")
    return None


def _descriptive(finding: str) -> bool:
    """A finding that describes the study rather than an abnormality (the contrast phase, a hemisphere, a side)."""
    return finding.endswith((" phase", " hemisphere")) or finding == "contrast" or " on the " in finding or IN_SLICE_WORDS in finding


def _finding_list(key: str, findings: dict[str, str]) -> str:
    on = key != "negative findings"
    picked = [(k, v[v.find("(") + 1:v.find(")")] if "(" in v else "") for k, v in findings.items() if v.startswith("yes") == on]
    if key == "impression":
        return ("; ".join(k for k, _ in picked).capitalize() + ".") if picked else "No finding above the expert's thresholds."
    return ", ".join(f"{k} ({p})" if p else k for k, p in picked) if picked else "none"


def _norm(key: str) -> str:
    return " ".join(key.lower().split())
