"""The agent loop with a scripted backend and small fake experts in the real registry class."""

from __future__ import annotations

import numpy as np
import pytest

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Finding, Measurement, tool_message
from experts.registry import ExpertRegistry
from vlm.agent import Agent
from vlm.backends.base import BackendInfo, ChatBackend
from vlm.conversation import Conversation
from vlm.tools import format_tool_call

TARGETS = ["everything", "liver", "liver tumor", "left kidney"]


class FakeCT(Expert):
    name = "ct_segmentation"
    description = "CT organ segmentation with volumes in mL."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"targets": {"anyOf": [{"type": "string", "enum": TARGETS}]}},
                  "additionalProperties": False}

    def _run(self, volumes, **args):
        mask = np.zeros(volumes.shape, np.uint8)
        mask[2:5, 2:5, :] = 1
        return ExpertResult(expert=self.name, measurements=[Measurement("liver", "volume", 1523.4, "mL")],
                            label_volume=volumes.like(mask), label_names={1: "liver"}, summary="Liver 1523.4 mL.",
                            overlay_renderer=lambda vol, res, slice_index=None: np.full((8, 8, 3), 200, np.uint8))


class FakeCXR(Expert):
    name = "cxr_classification"
    description = "Chest radiograph findings."
    modalities = ("DX", "CR")

    def _run(self, volumes, **args):
        return ExpertResult(expert=self.name, findings=[Finding("pleural effusion", True, 0.87)], summary="Effusion likely.")


class FakeBrain(Expert):
    name = "mri_brain_tumor"
    description = "Brain tumour segmentation from T1, T1c, T2, FLAIR."
    modalities = ("MR",)
    sequences = ("T1", "T1c", "T2", "FLAIR")
    seen: list = []

    def _run(self, volumes, **args):
        if not isinstance(volumes, dict):
            raise ExpertError("mri_brain_tumor needs the four sequences.")
        FakeBrain.seen = sorted(volumes)
        raise RuntimeError("CUDA out of memory")  # an expert bug: must become a tool error


class ScriptedBackend:
    """Replies from a script, in small pieces; records what it was given."""

    def __init__(self, replies, takes_images=True):
        self.replies = list(replies)
        self.calls = []
        self.info = BackendInfo(name="scripted", takes_images=takes_images)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
        self.calls.append({"messages": messages, "images": list(images or []), "tools": tools, "cache_key": cache_key,
                           "stop": list(config.stop) if config else [],
                           "references": tuple(constraints.references) if constraints else (),
                           "call_side": constraints.call_side if constraints else "",
                           "answer_side": constraints.answer_side if constraints else ""})
        reply = self.replies.pop(0) if self.replies else "No more replies."
        for i in range(0, len(reply), 7):
            yield reply[i:i + 7]


def _vol(modality, sequence="", shape=(8, 8, 4)):
    return Volume(np.zeros(shape, np.float32), np.eye(4), modality=modality, sequence=sequence)


@pytest.fixture()
def registry():
    reg = ExpertRegistry()
    for cls in (FakeCT, FakeCXR, FakeBrain):
        reg.register(cls.name, cls)
    return reg


def _ct_conversation():
    return Conversation(volumes={"CT": _vol("CT")}, images=[np.zeros((16, 16), np.uint8)])


def test_several_tool_rounds_then_a_grounded_answer_and_an_unknown_argument_is_dropped(registry):
    backend = ScriptedBackend([
        "Let me measure. " + format_tool_call("ct_segmentation", {"targets": "liver"}),
        format_tool_call("ct_segmentation", {"targets": "liver", "colour": "red"}),
        "The liver volume is 1523.4 mL.",
    ])
    assert isinstance(backend, ChatBackend)
    conv = _ct_conversation()
    turn = Agent(backend, registry, max_rounds=3).run_turn(conv, "What is the liver volume?")
    assert turn.answer == "Let me measure. The liver volume is 1523.4 mL.\n\nSource: ct_segmentation result."
    assert turn.rounds == 3 and turn.flags == []
    ct, bad = turn.tool_calls
    assert ct.result.measurements[0].value == 1523.4 and ct.arguments == {"targets": "liver"}
    # an argument the expert does not take is dropped (noted), not a failed call
    assert bad.result is not None and bad.arguments == {"targets": "liver"} and "colour 'red' dropped" in bad.repairs[0]
    assert len(turn.overlays) == 2 and turn.overlays[0].shape == (8, 8, 3)
    # what the model saw: tools every round, the slice first, then the overlay with the tool message
    second = backend.calls[1]
    assert [t["function"]["name"] for t in second["tools"]] == ["ct_segmentation"]  # the experts that read this CT
    assert second["messages"][-1] == {"role": "tool", "name": "ct_segmentation", "content": "<image>\n" + tool_message(ct.result)}
    assert len(second["images"]) == 2 and second["images"][1].shape == (8, 8, 3)
    assert '"error"' not in backend.calls[2]["messages"][-1]["content"]  # the repaired call's result, not an error
    assert "</tool_call>" in second["stop"] and all(c["cache_key"] == conv.cache_id for c in backend.calls)
    assert conv.messages[-1] == {"role": "assistant", "content": "Let me measure. The liver volume is 1523.4 mL."}


def test_a_call_to_an_expert_that_cannot_read_the_study_runs_the_one_that_can(registry):
    backend = ScriptedBackend([format_tool_call("cxr_classification", {}), "The liver volume is 1523.4 mL."])
    conv = _ct_conversation()
    turn = Agent(backend, registry).run_turn(conv, "What is the liver volume?")
    (call,) = turn.tool_calls
    assert call.name == "ct_segmentation" and call.error is None and call.result.measurements[0].value == 1523.4
    assert "cannot read this study" in call.repairs[0]
    assert format_tool_call("ct_segmentation", {}) in conv.messages[2]["content"]  # the history holds the call as run


def test_follow_up_keeps_history_and_shows_the_image_once(registry):
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {}), "Liver 1523.4 mL.", "It is 1523.4 mL, as measured."])
    agent = Agent(backend, registry, max_rounds=2)
    conv = _ct_conversation()
    agent.run_turn(conv, "Liver volume?")
    turn = agent.run_turn(conv, "Repeat the number.")
    assert turn.flags == [] and turn.tool_calls == []  # the earlier result grounds the number
    last = backend.calls[-1]
    assert sum(m["content"].count("<image>") for m in last["messages"]) == 2 == len(last["images"])
    assert last["messages"][-1] == {"role": "user", "content": "Repeat the number."}


def test_malformed_call_and_unknown_expert_go_back_as_tool_errors(registry):
    backend = ScriptedBackend([
        '<tool_call>{"name": "ct_segmentation", "arguments": {targets}}</tool_call>',
        format_tool_call("pet_uptake", {}),
        format_tool_call("ct_segmentation", {"targets": "pancreas"}),
        "I could not run the expert.",
    ])
    two_readers = Conversation(volumes={"CT": _vol("CT"), "DX": _vol("DX")}, images=[np.zeros((16, 16), np.uint8)])
    turn = Agent(backend, registry, max_rounds=3).run_turn(two_readers, "Organ volumes?")  # no one expert to repair to
    errors = [c.error for c in turn.tool_calls]
    assert "JSON" in errors[0] and "unknown expert 'pet_uptake'" in errors[1] and "invalid targets" in errors[2]
    assert turn.answer == "I could not run the expert." and turn.rounds == 4
    assert all('"error"' in m["content"] for m in backend.calls[-1]["messages"] if m["role"] == "tool")


def test_round_limit_is_hard(registry):
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {})] * 5)
    turn = Agent(backend, registry, max_rounds=2).run_turn(_ct_conversation(), "Liver volume?")
    assert len(backend.calls) == 3 and len(turn.tool_calls) == 2
    assert "tool round limit reached (2)" in turn.flags
    assert turn.answer.startswith("I stopped after 2 expert calls") and "1523.4" in turn.answer


def test_ungrounded_number_is_flagged_and_noted(registry):
    backend = ScriptedBackend(["The liver is about 1710 mL."])
    turn = Agent(backend, registry, plan_calls=False).run_turn(_ct_conversation(), "Liver volume?")
    assert turn.flags == ["ungrounded number: 1710"]
    assert "1710 does not appear in any expert result" in turn.answer


def test_modality_mismatch_replies_without_asking_the_model(registry):
    backend = ScriptedBackend(["The liver volume is 1500 mL."])
    conv = Conversation(volumes={"DX": _vol("DX", shape=(16, 16, 1))}, images=[np.zeros((16, 16), np.uint8)])
    turn = Agent(backend, registry).run_turn(conv, "What is the liver volume?")
    assert backend.calls == [] and turn.flags == ["modality mismatch"]
    assert "ct_segmentation" in turn.answer and "radiograph" in turn.answer and "1500" not in turn.answer


def test_streamed_events_hide_call_text(registry):
    backend = ScriptedBackend(["Checking. " + format_tool_call("ct_segmentation", {}), "Liver 1523.4 mL."])
    events = list(Agent(backend, registry).stream_turn(_ct_conversation(), "Liver volume?"))
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("done") == len(kinds) - 1
    streamed = "".join(e.text for e in events if e.kind == "token")
    assert streamed.startswith("Checking. Liver 1523.4 mL.") and "tool_call" not in streamed
    assert events[-1].turn.answer == "Checking. Liver 1523.4 mL.\n\nSource: ct_segmentation result."


def test_legacy_trigger_runs_expert_and_mr_sequences_go_together(registry):
    backend = ScriptedBackend(["<VISTA3D(hepatic tumor)>", "Done.", "<BRATS()>", "The expert failed."])
    agent = Agent(backend, registry)
    turn = agent.run_turn(_ct_conversation(), "Any liver tumor?")
    assert turn.tool_calls[0].arguments == {"targets": "liver tumor"} and turn.tool_calls[0].error is None
    mr = Conversation(volumes={s: _vol("MR", s) for s in ("T1", "T1c", "T2", "FLAIR")}, images=[np.zeros((8, 8), np.uint8)])
    turn = agent.run_turn(mr, "Segment the brain tumor.")
    assert FakeBrain.seen == ["FLAIR", "T1", "T1c", "T2"]
    assert "failed internally (RuntimeError)" in turn.tool_calls[0].error and turn.answer == "The expert failed."


def test_backend_failure_ends_the_turn_cleanly(registry):
    class Broken(ScriptedBackend):
        def stream_chat(self, *a, **k):
            yield "Partial "
            raise RuntimeError("device lost")

    events = list(Agent(Broken([]), registry).stream_turn(_ct_conversation(), "Liver volume?"))
    assert [e.kind for e in events][-2:] == ["error", "done"]
    assert events[-1].turn.answer == "Partial" and "backend error: RuntimeError" in events[-1].turn.flags


def test_field_references_are_filled_from_the_tool_result_in_stream_and_answer(registry):
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "liver"}),
                               "The liver volume is [[liver volume]]; [[spleen volume]] was not asked.", "Still [[liver volume]]."])
    agent = Agent(backend, registry, cite=False)  # the answer as the model wrote it, references filled
    conv = _ct_conversation()
    events = list(agent.stream_turn(conv, "Liver volume?"))
    streamed = "".join(e.text for e in events if e.kind == "token")
    turn = events[-1].turn
    assert turn.answer == "The liver volume is 1523.4 mL; (not in the expert result) was not asked."
    assert streamed == turn.answer and "[[" not in streamed  # pieces of 7 characters split the references
    assert turn.flags == ["unresolved reference: spleen volume"]
    assert conv.messages[-1]["content"].startswith("The liver volume is [[liver volume]]")  # the model's own words in history
    follow = agent.run_turn(conv, "Again?")  # a follow-up fills from the earlier result
    assert follow.answer == "Still 1523.4 mL." and follow.flags == []


def test_references_are_constrained_to_the_fields_the_results_hold(registry):
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "liver"}), "The liver volume is [[liver volume]]."])
    turn = Agent(backend, registry, max_rounds=2).run_turn(_ct_conversation(), "Liver volume?")
    assert turn.answer == "The liver volume is 1523.4 mL.\n\nSource: ct_segmentation result."
    assert backend.calls[0]["references"] == ()  # no result yet: nothing to constrain to
    assert "liver volume" in backend.calls[1]["references"] and "liver" in backend.calls[1]["references"]
    off = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "liver"}), "Done."])
    Agent(off, registry, max_rounds=2, constrain_references=False).run_turn(_ct_conversation(), "Liver volume?")
    assert off.calls[1]["references"] == ()


def test_calls_and_answers_stay_on_the_side_asked_and_measured(registry):
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "left kidney"}), "The left kidney volume is [[liver volume]]."])
    Agent(backend, registry, max_rounds=2).run_turn(_ct_conversation(), "What is the volume of the left kidney?")
    assert [c["call_side"] for c in backend.calls] == ["left", "left"]
    assert [c["answer_side"] for c in backend.calls] == ["", "left"]  # the answer round follows a call on the left kidney
    both = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "everything"}), "Done."])
    Agent(both, registry, max_rounds=2, plan_calls=False).run_turn(_ct_conversation(), "Compare the left and right kidneys.")
    assert [(c["call_side"], c["answer_side"]) for c in both.calls] == [("", ""), ("", "")]
    failed = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "right kidney"}), "Done."])  # not in the enum: no result
    Agent(failed, registry, max_rounds=2, plan_calls=False).run_turn(_ct_conversation(), "Right kidney?")
    assert failed.calls[1]["answer_side"] == ""


def test_a_question_about_the_slice_on_screen_gets_what_that_slice_of_the_mask_shows(registry):
    """With the viewer's axial slice known, a yes / no question about it gets the expert's "in this slice"
    finding (the fake liver mask covers 3×3 = 9 px of every slice: under the 20 px organ rule); a question
    about the study, or no slice on screen, gets the expert's result unchanged."""
    call = format_tool_call("ct_segmentation", {"targets": "liver"})
    for question, slice_index, extra in (("Is the liver visible in this slice?", 2, {"liver in this slice": "no"}),
                                         ("What is the liver volume?", 2, {}), ("Is the liver visible in this slice?", None, {})):
        backend = ScriptedBackend([call, "[[liver in this slice?]]"])
        conv = _ct_conversation()
        conv.shown_slice = slice_index
        turn = Agent(backend, registry).run_turn(conv, question)
        tool_text = backend.calls[1]["messages"][-1]["content"]
        assert ("in this slice" in tool_text) == bool(extra), question
        found = {f.label: "yes" if f.present else "no" for f in turn.tool_calls[0].result.findings}
        assert found == extra
        # a bare field is said with its name; a field the result lacks stays "(not in the expert result)"
        # without a slice on screen the unfilled reference is not shown: the field asked for answers, else the result's summary
        asked = "1523.4 mL — liver volume.\n\nSource: ct_segmentation result." if question.startswith("What") else "Liver 1523.4 mL."
        assert turn.answer == ("No (liver in this slice).\n\nSource: ct_segmentation result." if extra else asked)


def test_a_conversation_on_a_study_shows_the_middle_slice_and_knows_it():
    from types import SimpleNamespace

    ct = _vol("CT", shape=(8, 8, 5))
    study = SimpleNamespace(series=[SimpleNamespace(volume=ct, modality="CT")])
    conv = Conversation.from_study(study)
    assert len(conv.images) == 1 and conv.shown_slice == 2  # the picture the model sees is the slice "in this slice" means
    assert Conversation.from_study(study, on_screen=False).shown_slice is None


def test_an_answer_on_a_result_the_expert_marked_uncertain_says_uncertain(registry, monkeypatch):
    run = registry.run

    def doubtful(name, volumes, **arguments):
        return run(name, volumes, **arguments).mark_uncertain(["liver volume far above the adult range"])

    monkeypatch.setattr(registry, "run", doubtful)
    backend = ScriptedBackend([format_tool_call("ct_segmentation", {"targets": "liver"}), "The liver volume is [[liver volume]]."])
    turn = Agent(backend, registry).run_turn(_ct_conversation(), "What is the liver volume?")
    assert turn.answer.startswith("The liver volume is 1523.4 mL.")
    assert "Uncertain: the expert marked this result uncertain (liver volume far above the adult range)." in turn.answer
    assert "expert uncertain" in turn.flags
