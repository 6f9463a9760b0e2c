"""Every option of every `m3` command explains itself in --help: what it does, and what it is when not given.

The whole argparse tree of ``app.main.build_parser`` is walked, nested commands included (``m3 train vision``,
``m3 experts train``, ``m3 compress maskllm``, ``m3 pacs outbox drop``, ``m3 audit export``), and each option's help
is read as ``--help`` prints it (``%(default)s`` expanded, ``ArgumentDefaultsHelpFormatter`` and
``BooleanOptionalAction`` additions included)."""

from __future__ import annotations

import argparse

import pytest
from localhost import cli_actions

from app.main import build_parser

# Options that are switches: their default is "off" (or "on" for --no-x), which the help's verb already says.
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction, argparse._AppendConstAction,
             argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


@pytest.fixture(scope="module")
def actions():
    return list(cli_actions(build_parser(), "m3"))


def _printed_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help of ``action`` as ``--help`` prints it, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _name(path: str, action: argparse.Action) -> str:
    return f"{path} {'/'.join(action.option_strings) or action.dest}"


def _commands(parser: argparse.ArgumentParser, path: str):
    """(command path, its one-line help in the parent's list) for every command under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub, listed.get(name)
                yield from _commands(sub, f"{path} {name}")


def _value_words(default) -> list[str]:
    """What of a default value the help must show: each item of a list, a number as written or in short form."""
    if isinstance(default, (list, tuple)):
        return [str(v) for v in default]
    if isinstance(default, float):
        return [str(default), f"{default:g}"]
    return [str(default)]


def test_the_walk_reaches_the_nested_commands(actions):
    paths = {path for path, _, _ in actions}
    assert {"m3 train vision", "m3 train all", "m3 experts train", "m3 compress maskllm", "m3 compress flextron-export",
            "m3 pacs outbox drop", "m3 audit export", "m3 export", "m3 serve-lm", "m3 manifest"} <= paths
    assert len(actions) > 300  # every option of every command, not a sample


def test_every_command_prints_its_help_and_is_listed_with_a_line_of_help():
    silent = []
    for path, parser, line in _commands(build_parser(), "m3"):
        assert parser.format_help().startswith("usage:"), path  # a stray % in a help string breaks --help
        if not (line and line.strip()):
            silent.append(path)
    assert not silent, f"commands listed without a help line: {silent}"


def test_every_option_and_positional_has_help_text(actions):
    missing = [_name(path, a) for path, _, a in actions if not (a.help and a.help.strip())]
    assert not missing, f"options without help: {missing}"


def test_every_option_with_a_default_value_shows_that_value_in_its_help(actions):
    hidden = []
    for path, parser, action in actions:
        if isinstance(action, _SWITCHES) or action.help in (None, argparse.SUPPRESS):
            continue
        if action.default is None or action.default is argparse.SUPPRESS or action.required:
            continue
        text = _printed_help(parser, action)
        _, said, after = text.lower().partition("default")
        words = _value_words(action.default)
        if not said or (words and all(str(w).lower() not in after for w in words)):
            hidden.append(f"{_name(path, action)} (default {action.default!r}): {text!r}")
    assert not hidden, "options whose --help does not show their default:\n" + "\n".join(hidden)


def test_every_optional_option_without_a_default_value_says_what_happens_when_it_is_not_given(actions):
    unsaid = []
    for path, parser, action in actions:
        if isinstance(action, _SWITCHES) or not action.option_strings or action.required:
            continue
        if action.default is not None or action.help in (None, argparse.SUPPRESS):
            continue
        text = _printed_help(parser, action)
        if "default" not in text.lower():
            unsaid.append(f"{_name(path, action)}: {text!r}")
    assert not unsaid, "options whose --help does not say what applies when they are left out:\n" + "\n".join(unsaid)
