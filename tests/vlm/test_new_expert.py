"""An expert added with its own metadata (modality, vocabulary) is offered, called and quoted with no change to vlm."""

from __future__ import annotations

import numpy as np

from data.study import Volume
from experts.base import Expert, ExpertResult, Finding, Measurement
from experts.registry import ExpertRegistry
from vlm.agent import Agent
from vlm.backends.base import BackendInfo
from vlm.conversation import Conversation


class CTOrgans(Expert):
    name = "ct_segmentation"
    description = "CT organ segmentation with volumes in mL."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"targets": {"type": "string", "enum": ["liver", "spleen"]}}}
    vocabulary = {"targets": {"liver": ("liver", "hepatic"), "spleen": ("spleen", "splenic")}}

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, measurements=[Measurement("liver", "volume", 1523.4, "mL")])


class Gallbladder(Expert):
    """A toy CT expert for a structure the clinical lexicon does not know."""

    name = "gallbladder_ct"
    description = "Gallbladder segmentation on CT: its volume in mL and gallstones."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"targets": {"type": "string", "enum": ["gallbladder", "gallstone"]}}}
    vocabulary = {"targets": {"gallbladder": ("gallbladder", "gall bladder", "GB", "cholecyst"),
                              "gallstone": ("gallstone", "gallstones", "cholelithiasis", "stone in the gallbladder")}}
    vocabulary_kinds = {"gallstone": "lesion"}

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, findings=[Finding("gallstone", True, 0.91)],
                            measurements=[Measurement("gallbladder", "volume", 42.5, "mL")], summary="Gallbladder 42.5 mL; gallstone.")


class Thyroid(Expert):
    """A toy ultrasound expert: its own modality and findings."""

    name = "thyroid_us"
    description = "Thyroid ultrasound: nodules."
    modalities = ("US",)
    parameters = {"type": "object", "properties": {}}
    vocabulary = {"findings": {"thyroid nodule": ("thyroid nodule", "thyroid nodules", "TN")}}

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, findings=[Finding("thyroid nodule", True, 0.8)])


class Answers:
    """Answers without calling any expert (a small model's slip): the planner must call the right one."""

    info = BackendInfo(name="scripted", takes_images=False)

    def __init__(self, answer):
        self.answer, self.tools = answer, []

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        self.tools.append([t["function"]["name"] for t in tools or []])
        yield self.answer


def _registry():
    registry = ExpertRegistry()  # built here: nothing outside experts/ knows these experts
    for cls in (CTOrgans, Gallbladder, Thyroid):
        registry.register(cls.name, cls)
    return registry


def _study(modality):
    return Conversation(volumes={modality: Volume(np.zeros((8, 8, 4), np.float32), np.eye(4), modality=modality)})


def test_a_gallbladder_volume_question_calls_the_gallbladder_expert_and_quotes_its_volume():
    backend = Answers("Measured.")
    turn = Agent(backend, _registry()).run_turn(_study("CT"), "How big is the gall bladder?")
    assert backend.tools[0] == ["ct_segmentation", "gallbladder_ct"]  # the experts that read a CT, offered as tools
    (call,) = turn.tool_calls
    assert call.name == "gallbladder_ct" and call.arguments == {"targets": "gallbladder"}
    assert "42.5 mL" in turn.answer and "expert called for the question" in turn.flags


def test_a_gallstone_question_is_answered_yes_from_the_new_experts_finding():
    turn = Agent(Answers("Checked."), _registry()).run_turn(_study("CT"), "Any cholelithiasis?")
    assert [c.name for c in turn.tool_calls] == ["gallbladder_ct"] and turn.tool_calls[0].arguments == {"targets": "gallstone"}
    assert turn.answer.startswith("Yes (gallstone: probability 0.91).")


def test_an_ultrasound_expert_answers_an_ultrasound_study_and_a_ct_is_told_it_needs_one():
    turn = Agent(Answers("Looked."), _registry()).run_turn(_study("US"), "Is there a thyroid nodule?")
    assert [c.name for c in turn.tool_calls] == ["thyroid_us"]
    assert turn.answer.startswith("Yes (thyroid nodule: probability 0.80).")
    backend = Answers("A guess.")
    refused = Agent(backend, _registry()).run_turn(_study("CT"), "Is there a thyroid nodule?")
    assert refused.flags == ["modality mismatch"] and backend.tools == []
    assert "thyroid_us" in refused.answer and "ultrasound" in refused.answer
