"""``m3 chat`` (one agent turn on a study, from the shell), plus the other vlm commands.

The training, evaluation, compression and LM-serving commands live in their own modules; each defines
``add_parsers(subparsers)`` and is registered here when it is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Any

__all__ = ["add_parsers", "chat"]

_OTHER_COMMANDS = ("vlm.train.cli", "vlm.eval.cli", "vlm.compress.cli", "vlm.serve_lm")


def add_parsers(sub: Any) -> None:
    """Register ``chat`` and the commands of the other vlm modules that exist."""
    p = sub.add_parser("chat", help="ask one question about a study; the model may call experts",
                       description="Load a study and a model, run one agent turn, print the answer and the expert calls.")
    p.add_argument("--model", required=True, help="checkpoint folder (m3, VILA layout, or an image-text-to-text model)")
    p.add_argument("--max-rounds", type=int, default=3, help="most expert-calling rounds (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per generation (default 256)")
    p.add_argument("study", help="study folder, DICOM / NIfTI file, image or zip")
    p.add_argument("question", help="the question, in quotes")
    p.set_defaults(func=_chat_command)
    for name in _OTHER_COMMANDS:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # the parent package is not installed
            spec = None
        if spec is not None:
            importlib.import_module(name).add_parsers(sub)


def chat(model: str, study: str, question: str, *, max_rounds: int = 3, max_new_tokens: int = 256, out: Any = None) -> Any:
    """Run one agent turn on ``study`` with the model in folder ``model``; prints as it streams and
    returns the ``AgentTurn``."""
    from data import load_study
    from experts.registry import default_registry
    from vlm.agent import Agent
    from vlm.backends import load_backend
    from vlm.backends.base import GenerationConfig
    from vlm.conversation import Conversation

    out = out or sys.stdout
    conversation = Conversation.from_study(load_study(study))
    agent = Agent(load_backend(model), default_registry(), max_rounds, generation=GenerationConfig(max_new_tokens=max_new_tokens))
    turn = None
    for event in agent.stream_turn(conversation, question):
        if event.kind == "token":
            out.write(event.text)
            out.flush()
        elif event.kind == "error":
            out.write(f"\n[error] {event.text}\n")
        elif event.kind == "done":
            turn = event.turn
    out.write("\n")
    for call in turn.tool_calls:
        status = f"error: {call.error}" if call.error else (call.result.summary if call.result else "")
        out.write(f"[tool] {call.name}({call.arguments}) {call.seconds:.1f} s → {status}\n")
    for flag in turn.flags:
        out.write(f"[flag] {flag}\n")
    return turn


def _chat_command(args: argparse.Namespace) -> int:
    chat(args.model, args.study, args.question, max_rounds=args.max_rounds, max_new_tokens=args.max_new_tokens)
    return 0
