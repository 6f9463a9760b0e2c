"""The agent reads its expert results as field tables and reports what its decoding constraints could not do."""

from __future__ import annotations

import numpy as np
import pytest

import data.tool_text
from data.study import Volume
from experts.base import Expert, ExpertResult, Finding, Measurement
from experts.registry import ExpertRegistry
from vlm.agent import Agent
from vlm.backends.base import BackendInfo
from vlm.conversation import Conversation
from vlm.tools import format_tool_call


class KidneyCT(Expert):
    name = "ct_segmentation"
    description = "CT organ segmentation with volumes in mL."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"targets": {"type": "string", "enum": ["left kidney", "right kidney", "kidney cyst", "everything"]}},
                  "additionalProperties": False}

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, findings=[Finding("kidney cyst", True), Finding("kidney cyst on the left", True)],
                            measurements=[Measurement("left kidney", "volume", 150.2, "mL"), Measurement("kidney cyst", "count", 1, "count")])


class Scripted:
    """Replies from a script; records the constraints each generation was given."""

    def __init__(self, replies, remote=False):
        self.replies, self.constraints = list(replies), []
        self.info = BackendInfo(name="scripted", takes_images=False, remote=remote)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        self.constraints.append(constraints)
        yield self.replies.pop(0) if self.replies else "No more replies."


@pytest.fixture()
def registry():
    reg = ExpertRegistry()
    reg.register(KidneyCT.name, KidneyCT)
    return reg


def _conversation():
    return Conversation(volumes={"CT": Volume(np.zeros((8, 8, 4), np.float32), np.eye(4), modality="CT")})


def test_the_cyst_side_is_filled_from_the_result_itself_not_from_its_tool_text(registry, monkeypatch):
    def no_text(*_):
        raise AssertionError("the agent parsed a tool message back")

    monkeypatch.setattr(data.tool_text, "fields_from_text", no_text)
    backend = Scripted([format_tool_call("ct_segmentation", {"targets": "kidney cyst"}), "The cyst is on the [[kidney cyst side]]."])
    turn = Agent(backend, registry, cite=False).run_turn(_conversation(), "Which side is the renal cyst on?")
    assert turn.answer == "The cyst is on the left." and turn.flags == []


def test_a_constraint_that_fails_while_the_model_writes_is_shown_with_the_answer(registry, tiny_m3, monkeypatch):
    """The in-process model writes under the reference constraint; a constraint that breaks mid-answer leaves those
    steps unchecked and the clinician is told, instead of the check silently switching off."""
    from app.chat import flag_text
    from vlm.backends.base import GenerationConfig
    from vlm.backends.hf_vlm import HFVLMBackend
    from vlm.constraints import ReferenceConstraint

    def broken(self, text, vocab):
        raise KeyError("left kidney volume")

    monkeypatch.setattr(ReferenceConstraint, "_banned", broken)
    conversation = _conversation()
    conversation.images = [np.zeros((16, 16), np.uint8)]
    agent = Agent(HFVLMBackend(tiny_m3), registry, generation=GenerationConfig(max_new_tokens=3), plan_calls=False, cite=False)
    first = Scripted([format_tool_call("ct_segmentation", {"targets": "left kidney"}), "Measured."])
    Agent(first, registry, plan_calls=False).run_turn(conversation, "Volume of the left kidney?")  # a result to constrain to
    turn = agent.run_turn(conversation, "And how big is the left kidney?")
    failed = [f for f in turn.flags if f.startswith("constraint failed: ")]
    assert len(failed) == 1 and "reference constraint failed at generated token 0: KeyError" in failed[0]
    assert "(and 2 more steps)" in failed[0]  # every step of the three it wrote went unchecked
    assert "written unchecked" in flag_text(failed[0])


def test_constraints_travel_apart_from_the_sampling_settings(registry):
    backend = Scripted([format_tool_call("ct_segmentation", {"targets": "left kidney"}), "The left kidney is [[left kidney volume]]."])
    turn = Agent(backend, registry).run_turn(_conversation(), "How big is the left kidney?")
    first, second = backend.constraints
    assert (first.references, first.call_side, first.answer_side) == ((), "left", "")
    assert "left kidney volume" in second.references and second.answer_side == "left" and second.answer_keys == ("left kidney volume",)
    assert (second.asked.family, second.asked.terms, second.asked.side) == ("volume", ("left kidney",), "left") and turn.flags == []


def test_a_remote_model_cannot_be_constrained_and_the_turn_says_so_once(registry):
    from app.chat import flag_text

    backend = Scripted([format_tool_call("ct_segmentation", {"targets": "left kidney"}), "The left kidney is [[left kidney volume]]."],
                       remote=True)
    turn = Agent(backend, registry).run_turn(_conversation(), "How big is the left kidney?")
    assert turn.answer.startswith("The left kidney is 150.2 mL.")  # references are still filled from the result
    assert turn.flags.count("constraints not applied (remote model)") == 1
    assert "checked only afterwards" in flag_text("constraints not applied (remote model)")
    plain = Scripted(["Hello."], remote=True)
    assert Agent(plain, registry, constrain_references=False).run_turn(_conversation(), "Left kidney?").flags == []


def test_a_follow_up_answered_from_an_earlier_result_is_checked_against_it(registry):
    backend = Scripted([format_tool_call("ct_segmentation", {"targets": "left kidney"}), "Done.", "The right lung volume; right lung volume."])
    agent, conversation = Agent(backend, registry), _conversation()
    agent.run_turn(conversation, "Measure the left kidney.")
    turn = agent.run_turn(conversation, "How big is the left kidney again?")
    assert turn.tool_calls == [] and turn.answer.startswith("150.2 mL — left kidney volume.")
    assert "right lung" not in turn.answer and "answer composed from the expert result" in turn.flags


def test_a_turn_where_nothing_stands_says_why_instead_of_an_empty_answer(registry):
    backend = Scripted([""])
    turn = Agent(backend, registry, plan_calls=False).run_turn(_conversation(), "Tell me something.")
    assert turn.answer.startswith("I could not answer this") and "no answer" in turn.flags
