"""``m3 chat`` (one agent turn on a study, from the shell), ``m3 ask`` (a question file), plus the other vlm commands.

The training, evaluation, compression and LM-serving commands live in their own modules; each defines
``add_parsers(subparsers)`` and is registered here when it is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "add_placement_arguments", "chat", "ask"]

_OTHER_COMMANDS = ("vlm.train.cli", "vlm.eval.cli", "vlm.compress.cli", "vlm.serve_lm", "vlm.routing.cli")


def add_parsers(sub: Any) -> None:
    """Register ``chat`` and the commands of the other vlm modules that exist."""
    p = sub.add_parser("chat", help="ask one question about a study; the model may call experts",
                       description="Load a study and a model, run one agent turn (the app's path), print the answer and the expert calls.")
    _model_arguments(p)
    p.add_argument("study", help="study folder, DICOM / NIfTI file, image or zip")
    p.add_argument("question", help="the question, in quotes")
    p.set_defaults(func=_chat_command)

    a = sub.add_parser("ask", help="ask a list of questions about a study (site acceptance); one JSON line per answer",
                       description="Ask each question of a JSON-lines file in a fresh conversation on STUDY, through the app's "
                                   "path (pictures, agent, experts, generation settings), optionally at a slice and plane. "
                                   "Writes answer, expert calls with arguments, results and errors, flags and latency per line.")
    _model_arguments(a)
    a.add_argument("study", help="study folder, DICOM / NIfTI file, image or zip")
    a.add_argument("--questions", required=True, help='JSON lines: {"question": ..., "slice": N, "plane": "axial", "expect": ..., '
                                                    '"expect_expert": ...}; only "question" is required')
    a.add_argument("--out", required=True, help="answers file to write (JSON lines)")
    a.set_defaults(func=_ask_command)
    for name in _OTHER_COMMANDS:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # the parent package is not installed
            spec = None
        if spec is not None:
            importlib.import_module(name).add_parsers(sub)


def chat(model: str | None, study: str, question: str, *, max_rounds: int = 3, max_new_tokens: int = 256, out: Any = None,
         device: str = "auto", dtype: str = "auto", lm_url: str | None = None, lm_model: str | None = None) -> Any:
    """Run one agent turn on ``study`` with the model in folder ``model`` (default: the embedded one) on ``device`` in
    ``dtype`` (``vlm.device.resolve_device``) — or the model ``lm_model`` served at ``lm_url`` (experts stay here) —
    through ``vlm.study_chat.StudyChat`` (the app's path); prints as it streams and returns the ``AgentTurn``."""
    from data import load_study
    from vlm.study_chat import StudyChat, TurnSettings

    out = out or sys.stdout
    backend, registry = _load(model, device, dtype, lm_url, lm_model)
    session = StudyChat(backend, registry, load_study(study), settings=TurnSettings(max_rounds, max_new_tokens))
    turn = None
    for event in session.stream(question):
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


def ask(model: str | None, study: str, questions: str, out: str, *, max_rounds: int = 3, max_new_tokens: int = 256,
        device: str = "auto", dtype: str = "auto", lm_url: str | None = None, lm_model: str | None = None) -> list[dict]:
    """``m3 ask``: every question of the JSON-lines file ``questions`` about ``study``, one fresh conversation each
    (``vlm.ask``), with the model on ``device`` in ``dtype`` (or ``lm_model`` served at ``lm_url``); answers written to
    ``out`` line by line as they come. Returns the records."""
    from data import load_study
    from vlm.ask import ask_questions, load_questions, summarise_answers
    from vlm.study_chat import TurnSettings

    items = load_questions(questions)  # a bad file fails before any model loads
    backend, registry = _load(model, device, dtype, lm_url, lm_model)
    records = []
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in ask_questions(backend, registry, load_study(study), items, settings=TurnSettings(max_rounds, max_new_tokens)):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            records.append(record)
    print(summarise_answers(records))
    print(f"answers: {path}")
    return records


def add_placement_arguments(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device`` and ``--dtype`` (``vlm.device``) on a command that loads a model; ``default`` None leaves them
    unset so a config file's ``models.device`` / ``models.dtype`` apply."""
    from vlm.device import DEVICE_CHOICES, DTYPE_CHOICES

    shown = default or "models.device / models.dtype of the config, else auto"
    p.add_argument("--device", default=default, metavar="|".join(DEVICE_CHOICES) + "|cuda:N",
                   help=f"where the model runs: auto = CUDA when available, else CPU (default: {shown})")
    p.add_argument("--dtype", default=default, choices=DTYPE_CHOICES,
                   help=f"model precision: auto = bfloat16 on a GPU (float16 where it lacks bf16), float32 on CPU (default: {shown})")


def _load(model: str | None, device: str = "auto", dtype: str = "auto", lm_url: str | None = None,
          lm_model: str | None = None) -> tuple[Any, Any]:
    """(chat backend, expert registry): ``vlm.backends.load_backend`` (manifest checked) on ``model`` or the embedded
    default model, placed on ``device`` in ``dtype`` — or, with ``lm_url``, the model ``lm_model`` of that
    OpenAI-compatible server (key: $M3_LM_API_KEY) — and the built-in experts, which run here either way."""
    from experts.registry import default_registry
    from vlm.backends import load_backend
    from vlm.device import resolve_device

    if lm_url:
        import os

        from vlm.backends.openai_api import RemoteBackendError, connect

        if model or not lm_model:
            raise RemoteBackendError(f"--lm-url {lm_url} needs --lm-model naming the served model, and no --model (the model "
                                     f"is the server's); got --lm-model {lm_model!r}, --model {model!r}.")
        return connect(lm_url, lm_model, api_key=os.environ.get("M3_LM_API_KEY") or None), default_registry()

    folder = Path(model) if model else Path(__file__).parent / "weights" / "default"
    resolve_device(device, dtype)  # a GPU asked for and absent fails here, before any weights are read
    return load_backend(folder, device=device, dtype=dtype), default_registry()


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder (m3, VILA layout, or an image-text-to-text model; default: the embedded model)")
    p.add_argument("--max-rounds", type=int, default=3, help="most expert-calling rounds (default 3, as in the app)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per generation (default 256, as in the app)")
    add_placement_arguments(p)
    p.add_argument("--lm-url", help="the API root of an OpenAI-compatible server (m3 serve-lm, vLLM) to use as the language "
                                    "model, e.g. http://gpu-node:8000/v1; experts run here (key: $M3_LM_API_KEY) (default: none, the model "
                                    "runs in this process)")
    p.add_argument("--lm-model", help="the model name served at --lm-url (default: none; needed with --lm-url)")


def _ask_command(args: argparse.Namespace) -> int:
    ask(args.model, args.study, args.questions, args.out, max_rounds=args.max_rounds, max_new_tokens=args.max_new_tokens,
        device=args.device, dtype=args.dtype, lm_url=args.lm_url, lm_model=args.lm_model)
    return 0


def _chat_command(args: argparse.Namespace) -> int:
    chat(args.model, args.study, args.question, max_rounds=args.max_rounds, max_new_tokens=args.max_new_tokens,
         device=args.device, dtype=args.dtype, lm_url=args.lm_url, lm_model=args.lm_model)
    return 0
