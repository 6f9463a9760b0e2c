"""The ``m3`` command: one front door over each package's CLI (CLI = API: each subcommand is a thin
argparse layer over one Python function)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from data.errors import M3Error

__all__ = ["main", "build_parser"]

# Each module defines ``add_parsers(subparsers)`` registering its commands with ``func=``.
COMMAND_MODULES = (
    "data.cli",  # m3 data info|synth|deid
    "experts.cli",  # m3 experts list|run|train
    "vlm.cli",  # m3 train|eval|compress|export|chat|serve-lm
    "app.cli",  # m3 serve|demo
    "app.pacs_cli",  # m3 pacs outbox list|retry|drop
)
# Commands that run experts through ``experts.registry.default_registry()``: the front door points it at the
# configured experts folder first (``m3 serve`` / ``demo`` build their own from the same setting).
EXPERT_COMMANDS = frozenset({"chat", "ask", "eval", "experts", "routing"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3", description="On-prem medical vision-language assistant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (never logs PHI)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in EXPERT_COMMANDS and getattr(args, "experts_command", "") != "train":
            use_configured_experts(getattr(args, "model", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except M3Error as exc:  # an error written for the user: one clear line, no traceback
        print(f"m3: error: {exc}", file=sys.stderr)
        return 1


def use_configured_experts(model: str | None = None) -> None:
    """Point ``default_registry()`` at the experts the configuration names (``models.experts_dir``, from
    ``$M3_CONFIG`` or ``$M3_MODELS_EXPERTS_DIR``), else at those of the export given as ``--model``, else the
    embedded bundle (``AppConfig.experts_source``)."""
    import dataclasses

    from app.config import load_config
    from experts.registry import configure_default_registry

    config = load_config()
    if model and config.models.experts_dir is None:
        config.models = dataclasses.replace(config.models, model_dir=Path(model))
    folder, source = config.experts_source()
    configure_default_registry(folder, embedded_fallback=config.models.embedded_experts_fallback, source=source)


if __name__ == "__main__":
    sys.exit(main())
