"""``m3 chat`` end to end on the tiny model, and the agent with the project's real expert registry."""

from __future__ import annotations

import argparse
import io

import re

import numpy as np

from data.study import Series, Study, Volume
from vlm.agent import Agent
from vlm.conversation import Conversation
from vlm.tools import format_tool_call


def test_chat_command_registered_and_runs_a_turn(tiny_m3_dir, monkeypatch):
    import data
    import experts.registry as registry_module
    from experts.registry import ExpertRegistry
    from vlm import cli

    parser = argparse.ArgumentParser(prog="m3")
    cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["chat", "--model", str(tiny_m3_dir), "--max-new-tokens", "4", "study-folder", "Describe the image."])
    assert args.func is cli._chat_command and args.max_rounds == 3

    ct = Volume(np.random.default_rng(0).normal(0, 50, (24, 24, 6)).astype(np.float32), np.eye(4), modality="CT")
    monkeypatch.setattr(data, "load_study", lambda path: Study(uid="1.2.3", series=[Series("4.5", "CT", "Axial", ct)]), raising=False)
    monkeypatch.setattr(registry_module, "default_registry", lambda: ExpertRegistry())
    out = io.StringIO()
    turn = cli.chat(str(tiny_m3_dir), "study-folder", "Describe the image.", max_new_tokens=4, out=out)
    assert turn.rounds == 1 and turn.question == "Describe the image."
    assert out.getvalue().startswith(turn.answer.split("\n\n(Note")[0])


class _Scripted:
    def __init__(self, replies):
        from vlm.backends.base import BackendInfo

        self.replies, self.info = list(replies), BackendInfo(name="scripted", takes_images=False)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        yield self.replies.pop(0)


def test_real_registry_on_a_phantom_ct():
    from data.phantoms.ct import generate_ct
    from experts.registry import default_registry
    from vlm.grounding import relevant_doubts

    ct, _, _ = generate_ct(0)
    conv = Conversation(volumes={"CT": ct}, images=[np.zeros((32, 32), np.uint8)])
    backend = _Scripted([format_tool_call("ct_segmentation", {"targets": "liver"}), "See the expert result."])
    turn = Agent(backend, default_registry(), max_rounds=2).run_turn(conv, "What is the liver volume?")
    call = turn.tool_calls[0]
    if call.result is not None:  # trained weights are installed: a real measurement in mL
        liver = [m for m in call.result.measurements if m.structure == "liver" and m.unit == "mL"]
        assert liver and liver[0].value > 0
        # a phantom's organ outside the adult range is marked uncertain by the expert, and the answer says so
        # the expert's doubts that bear on the liver are said in the answer; a doubt about another structure is not
        doubts = relevant_doubts(turn.intent, call.result.uncertain)
        assert turn.flags == ["answer composed from the expert result"] + (["expert uncertain"] if doubts else [])
        assert re.match(r"\d+(?:\.\d+)? mL — liver volume\.", turn.answer)  # "See the expert result." states no field: the field answers
        assert ("Uncertain:" in turn.answer) == bool(doubts)
    else:  # no weights yet: the agent reports the expert's own message to the model, no crash
        assert "weights not found" in call.error and turn.answer == "See the expert result."
