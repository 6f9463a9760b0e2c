"""The escalation log (step S1 of LLM-to-SLM conversion, arXiv 2506.02153): each turn the large model answered, as
one JSON line, de-identified, to become training data for the local model.

A line holds the reasons (codes), the intent family and form, the local model's confidence, the prompt the large
model was given (the conversation before the turn: system prompt, earlier questions and answers, tool results; the
pictures only counted), the turn's own messages (its tool calls as written, the tool results), its expert calls
(name, arguments, error, result fields), its final answer and flags, and the local model's attempt (answer, calls,
flags) when there was one.

The study is de-identified at ingest, so expert results and the system prompt are kept as they are. What a person
typed, and what a model wrote (it can echo the question; a failed call's error quotes it), goes through ``data.deid_text.scrub_identifiers``, with the
words of the study's own patient (``data.reidentify.ReidentificationKey.identity_words``, when the study was ingested
in this process) masked too. The file is created readable by the service user only (0600); lines are appended with
one write each, so several writers do not interleave.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from data.deid_text import scrub_identifiers
from data.reidentify import reidentification_key
from vlm.conversation import AgentTurn, Conversation, ToolCall

__all__ = ["EscalationLog", "escalation_record", "study_identity_words"]

_SCRUBBED_ROLES = ("user", "assistant")  # typed by a person, or written by a model that may echo it


class EscalationLog:
    """Appends escalated turns (``escalation_record``) to the JSON-lines file ``path`` (made 0600, folders created)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, conversation: Conversation, turn_start: int, turn: AgentTurn, local: AgentTurn | None = None) -> dict[str, Any]:
        """Append the large model's ``turn`` (its messages from index ``turn_start`` of ``conversation.messages``) and
        the ``local`` model's attempt; returns the record written."""
        record = escalation_record(conversation, turn_start, turn, local)
        line = json.dumps(record, ensure_ascii=False, default=str).encode() + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return record

    def read(self) -> list[dict[str, Any]]:
        """The records written so far, oldest first."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def escalation_record(conversation: Conversation, turn_start: int, turn: AgentTurn, local: AgentTurn | None = None) -> dict[str, Any]:
    """One escalated turn as a de-identified JSON object (module docstring)."""
    identity = study_identity_words(conversation)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return scrub_identifiers(value, identity)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        return value

    def message(m: dict[str, Any]) -> dict[str, Any]:
        content = str(m.get("content") or "")
        out = {"role": m["role"], "content": scrub(content) if m["role"] in _SCRUBBED_ROLES or _is_tool_error(m) else content}
        if m.get("name"):
            out["name"] = m["name"]
        if m.get("images"):
            out["images"] = len(m["images"])  # pictures of the de-identified study: counted, not kept
        return out

    def calls(turn_calls: list[ToolCall], results: bool) -> list[dict[str, Any]]:
        return [{"name": c.name, "arguments": scrub(c.arguments), "error": scrub(c.error),
                 **({"result": c.result.to_json() if c.result is not None else None} if results else {})}
                for c in turn_calls]

    routing = turn.routing
    intent = turn.intent
    messages = conversation.messages
    # the turn opens with its question (the system prompt, on a first turn, is part of the prompt)
    turn_start = next((i for i in range(turn_start, len(messages)) if messages[i]["role"] == "user"), turn_start)
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reasons": list(routing.reasons) if routing is not None else [],
        "family": getattr(intent, "family", ""),
        "form": getattr(intent, "form", ""),
        "local_confidence": None if routing is None or routing.confidence is None else round(routing.confidence, 4),
        "prompt": [message(m) for m in messages[:turn_start]],
        "question": scrub(turn.question),
        "turn": [message(m) for m in messages[turn_start:]],
        "tool_calls": calls(turn.tool_calls, results=True),
        "answer": scrub(turn.answer),
        "flags": scrub(list(turn.flags)),
        "local": None if local is None else {"answer": scrub(local.answer), "tool_calls": calls(local.tool_calls, results=False),
                                             "flags": scrub(list(local.flags))},
    }


def _is_tool_error(message: dict[str, Any]) -> bool:
    """A ``tool`` message that reports a failed call (``data.tool_text.format_tool_error``): its error can quote what
    the model wrote."""
    if message["role"] != "tool":
        return False
    try:
        body = json.loads(str(message.get("content") or "").split("\n")[-1])
    except ValueError:
        return True  # not the expert's JSON: treated as written text
    return isinstance(body, dict) and "error" in body


def study_identity_words(conversation: Conversation) -> list[str]:
    """The identity words of the patient of the conversation's study (``ReidentificationKey.identity_words``) when it
    was ingested in this process; [] otherwise (the patterns of ``scrub_identifiers`` still apply)."""
    words: set[str] = set()
    for uid in {v.study_uid for v in conversation.volumes.values() if v.study_uid}:
        try:
            words.update(reidentification_key(uid).identity_words())
        except KeyError:  # not ingested here (a NIfTI, an image, another process): no key to read
            continue
    return sorted(words, key=len, reverse=True)
