"""Tool calls in model text: parsing, legacy VILA-M3 triggers, argument mapping, streamed hiding.

The model writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. Published VILA-M3
checkpoints write ``<VISTA3D(hepatic tumor)>``, ``<BRATS()>`` or ``<CXR()>``; these map onto
``ct_segmentation``, ``mri_brain_tumor`` and ``cxr_classification``. A call that cannot be read keeps its
raw text and an ``error``, which the agent returns to the model as a tool error. Parsing is total: any
string gives calls or tool errors, in time linear in its length (nesting past Python's recursion limit,
numbers past its digit limit and arguments nested past :data:`MAX_ARGUMENT_DEPTH` are tool errors). Answers may name
result fields (``[[liver volume]]``); ``ReferenceFilter`` fills them in a stream.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

from data.errors import M3Error
from data.tool_text import REF_CLOSE, REF_OPEN
from data.tool_text import TOOL_CALL_OPEN as _OPEN
from data.tool_text import format_tool_call
from data.tool_text import format_tool_error as tool_error_message
from vlm.conversation import ToolCall

__all__ = [
    "ToolCallError",
    "MAX_ARGUMENT_DEPTH",
    "LEGACY_TRIGGERS",
    "parse_tool_calls",
    "ToolCallFilter",
    "ReferenceFilter",
    "legacy_arguments",
    "legacy_model_cards",
    "tool_error_message",
    "format_tool_call",
]

# legacy trigger → expert name
LEGACY_TRIGGERS: dict[str, str] = {"VISTA3D": "ct_segmentation", "BRATS": "mri_brain_tumor", "CXR": "cxr_classification"}
# VILA-M3's VISTA3D argument groups → this project's CT label names (data/phantoms/labels.py)
LEGACY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "hepatic tumor": ("liver tumor", "liver tumour", "hepatic tumor"),
    "lung tumor": ("lung nodule", "lung tumor"),
    "everything": ("all", "everything"),
    "organs": ("organs", "all"),
}
_JSON_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
# a legacy argument is a few words without brackets: bounding it keeps many unclosed "<CXR(" openers linear
_LEGACY_CALL = re.compile(r"<(" + "|".join(LEGACY_TRIGGERS) + r")\(([^<>()]{0,256})\)>")
MAX_ARGUMENT_DEPTH = 32  # nesting of a call's arguments (objects and lists); schemas need two or three
_OPENERS = (_OPEN,) + tuple(f"<{t}(" for t in LEGACY_TRIGGERS)


class ToolCallError(M3Error, ValueError):
    """A tool call the agent cannot run (unreadable JSON, unknown expert, bad arguments)."""


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split model text into the visible answer (text before the first call) and the calls.

    Calls that cannot be read come back with ``error`` set and ``name`` as far as it was readable.
    """
    spans: list[tuple[int, ToolCall]] = []
    for m in _JSON_CALL.finditer(text):
        spans.append((m.start(), _json_call(m.group(1), m.group(0))))
    for m in _LEGACY_CALL.finditer(text):
        name = LEGACY_TRIGGERS[m.group(1)]
        arg = m.group(2).strip().strip("'\"")
        spans.append((m.start(), ToolCall(name=name, arguments={"_legacy": arg} if arg else {}, raw=m.group(0))))
    spans.sort(key=lambda s: s[0])
    first = spans[0][0] if spans else len(text)
    return text[:first].rstrip(), [c for _, c in spans]


def legacy_arguments(arguments: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Map a legacy trigger's free-text argument onto the expert's JSON schema.

    The text goes into the schema's only string property (or one named ``targets``/``target``/
    ``structures``); enum values are matched through VILA-M3's group names.
    """
    if "_legacy" not in arguments:
        return arguments
    value = str(arguments["_legacy"]).strip().lower()
    props: Mapping[str, Any] = schema.get("properties", {}) or {}
    key = next((k for k in ("targets", "target", "structures") if k in props), None)
    if key is None:
        strings = [k for k, p in props.items() if p.get("type") in ("string", "array") or "anyOf" in p]
        if len(strings) != 1:
            return {}  # nothing to put it in: run with defaults
        key = strings[0]
    prop = props[key]
    enum = _enum_values(prop)
    if enum:
        candidates = (value,) + LEGACY_SYNONYMS.get(value, ())
        value = next((c for c in candidates if c in enum), value)
    return {key: [value] if prop.get("type") == "array" else value}


def _enum_values(prop: Mapping[str, Any]) -> list[Any]:
    """Allowed values of a schema property (its ``enum``, its items', or those of its ``anyOf`` options)."""
    values = list(prop.get("enum") or (prop.get("items") or {}).get("enum") or [])
    for option in prop.get("anyOf") or prop.get("oneOf") or []:
        values.extend(v for v in _enum_values(option) if v not in values)
    return values


def legacy_model_cards(tools: Sequence[Mapping[str, Any]]) -> str:
    """VILA-M3-style model cards for the prompt of a published checkpoint."""
    by_name = {v: k for k, v in LEGACY_TRIGGERS.items()}
    lines = ["Here is a list of available expert models:"]
    for tool in tools:
        fn = tool.get("function", tool)
        trigger = by_name.get(fn["name"], fn["name"].upper())
        props = (fn.get("parameters") or {}).get("properties") or {}
        values = [v for p in props.values() for v in _enum_values(p)]
        valid = ", ".join(repr(v) for v in values) if values else "None"
        lines.append(f"<{trigger}(args)> {fn.get('description', '').strip()} Valid args are: {valid}")
    lines.append("Give the model <NAME(args)> when selecting a suitable expert model.\n")
    return "\n".join(lines)


class ToolCallFilter:
    """Hides tool-call text from a token stream: ``feed`` returns what the user may see now.

    Text that could still turn into a call opener is held back; once a call opens, the rest of the
    generation is hidden (the agent runs the call and generates again).
    """

    def __init__(self) -> None:
        self._held = ""
        self.in_call = False

    def feed(self, piece: str) -> str:
        if self.in_call:
            return ""
        buf = self._held + piece
        self._held = ""
        out = []
        while buf:
            lt = buf.find("<")
            if lt < 0:
                out.append(buf)
                break
            out.append(buf[:lt])
            tail = buf[lt:]
            if any(tail.startswith(o) for o in _OPENERS):
                self.in_call = True
                break
            if any(o.startswith(tail) for o in _OPENERS):
                self._held = tail  # maybe an opener: wait for more text
                break
            out.append("<")
            buf = tail[1:]
        return "".join(out)

    def flush(self) -> str:
        held, self._held = ("" if self.in_call else self._held), ""
        return held


class ReferenceFilter:
    """Fills ``[[field]]`` references in a token stream from the tool results (``resolve``: text → text):
    text from ``[[`` to ``]]`` is held back and sent resolved, so the user never sees a reference."""

    def __init__(self, resolve: Callable[[str], str]) -> None:
        self._resolve = resolve
        self._held = ""

    def feed(self, piece: str) -> str:
        buf, self._held, out = self._held + piece, "", []
        while buf:
            start = buf.find(REF_OPEN[0])
            if start < 0:
                out.append(buf)
                break
            out.append(buf[:start])
            tail = buf[start:]
            if not tail.startswith(REF_OPEN):
                if REF_OPEN.startswith(tail):
                    self._held = tail  # maybe an opener: wait for more text
                    break
                out.append(tail[0])
                buf = tail[1:]
                continue
            end = tail.find(REF_CLOSE)
            if end < 0:
                if len(tail) > 96:  # no reference is this long: it was plain text
                    out.append(tail)
                else:
                    self._held = tail
                break
            out.append(self._resolve(tail[:end + len(REF_CLOSE)]))
            buf = tail[end + len(REF_CLOSE):]
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _json_call(body: str, raw: str) -> ToolCall:
    data, problem = _loads(body)
    if problem:
        return ToolCall(name="", arguments={}, raw=raw, error=f"tool call must be JSON {{\"name\": ..., \"arguments\": "
                                                              f"{{...}}}}; could not parse it ({problem}).")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return ToolCall(name="", arguments={}, raw=raw, error="tool call must be an object with a \"name\" string and an \"arguments\" object.")
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        args, problem = _loads(args) if args.strip() else ({}, None)
        if problem:
            return ToolCall(name=data["name"], arguments={}, raw=raw, error=f"arguments of {data['name']} must be a JSON object; the string given could not be parsed ({problem}).")
    if not isinstance(args, dict):
        return ToolCall(name=data["name"], arguments={}, raw=raw, error=f"arguments of {data['name']} must be a JSON object, got {type(args).__name__}.")
    if _depth(args) > MAX_ARGUMENT_DEPTH:
        return ToolCall(name=data["name"], arguments={}, raw=raw, error=f"arguments of {data['name']} nest more than {MAX_ARGUMENT_DEPTH} levels deep; give a flat object as the tool's schema asks.")
    return ToolCall(name=data["name"], arguments=args, raw=raw)


def _loads(text: str) -> tuple[Any, str | None]:
    """``json.loads(text)`` and ``None``, or ``None`` and why it failed (never an exception)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at character {exc.pos}"
    except RecursionError:
        return None, "it nests too deeply"
    except ValueError:  # e.g. an integer past Python's 4,300-digit conversion limit
        return None, "a number is too long"


def _depth(value: Any) -> int:
    """Nesting depth of JSON-like ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_ARGUMENT_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in item)
    return deepest
