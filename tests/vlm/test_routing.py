"""Small model first, large model when needed (``vlm.routing``): scripted local and large backends in the real
agent, router and registry; the local one reports the token log-probabilities its script gives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.study import Volume
from stand_in_experts import LiverCT
from experts.registry import ExpertRegistry
from vlm.agent import Agent
from vlm.backends.base import BackendInfo, TokenLogprobs
from vlm.conversation import Conversation
from vlm.routing import EscalationLog, RoutingConfig, RoutingDecision, RoutingError, Router
from vlm.study_chat import StudyChat
from vlm.tools import format_tool_call

CALL = format_tool_call("ct_segmentation", {"targets": "liver"})




class Scripted:
    """Replies from a script; with ``logprob`` set it reports that log-probability for every piece it streams.
    ``fail_constraints``: the first generation records a constraint failure, as an in-process backend would."""

    def __init__(self, name, replies, logprob=None, fail_constraints=False, error=None):
        self.replies = list(replies)
        self.logprob = logprob
        self.fail_constraints = fail_constraints
        self.error = error
        self.calls = []
        self.info = BackendInfo(name=name, takes_images=False, token_logprobs=logprob is not None)

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None, logprobs=None):
        self.calls.append(messages)
        if self.error is not None:
            raise self.error
        if self.fail_constraints and constraints is not None and len(self.calls) == 1:
            constraints.failures.append("no allowed token at step 3")
        reply = self.replies.pop(0) if self.replies else "No more replies."
        pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)]
        if logprobs is not None:
            logprobs.extend([self.logprob] * len(pieces))
        yield from pieces


@pytest.fixture()
def registry():
    reg = ExpertRegistry()
    reg.register(LiverCT.name, LiverCT)
    return reg


def _conversation(study_uid=""):
    volume = Volume(np.zeros((8, 8, 4), np.float32), np.eye(4), modality="CT", study_uid=study_uid)
    return Conversation(volumes={"CT": volume}, images=[np.zeros((16, 16), np.uint8)])


def _run(router, conversation, question, local, registry):
    events = list(router.stream_turn(conversation, question, local, lambda backend: Agent(backend, registry)))
    assert events[-1].kind == "done"
    return events, events[-1].turn


def _local(logprob=math.log(0.9), **kwargs):
    return Scripted("local-small", [CALL, "The liver volume is 1523.4 mL."], logprob, **kwargs)


def _large():
    return Scripted("large-vlm", [CALL, "The liver measures 1523.4 mL in volume."])


def test_a_confident_local_turn_is_answered_locally_and_the_large_model_is_not_asked(registry):
    local, large = _local(math.log(0.9)), _large()
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6))
    conv = _conversation()
    events, turn = _run(router, conv, "What is the liver volume?", local, registry)
    assert turn.answered_by == "local" and turn.escalation_reason == "" and large.calls == []
    assert turn.routing.confidence == pytest.approx(0.9) and turn.routing.line() == "Answered by: local model"
    assert "1523.4 mL" in turn.answer
    # the held answer is given once the turn is judged: tokens, then done
    assert "".join(e.text for e in events if e.kind == "token").startswith("The liver volume is 1523.4 mL.")


def test_a_turn_below_the_confidence_threshold_is_run_again_on_the_large_model_in_place_of_the_local_one(registry):
    local, large = _local(math.log(0.41)), _large()
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6))
    conv = _conversation()
    events, turn = _run(router, conv, "What is the liver volume?", local, registry)
    assert turn.answered_by == "large" and turn.escalation_reason == "low confidence 0.41 < 0.60"
    assert turn.routing.line() == "Answered by: large model (escalated: low confidence 0.41 < 0.60)"
    assert turn.answer.startswith("The liver measures 1523.4 mL in volume.") and len(large.calls) == 2
    # the local model's answer never reaches the clinician; its expert step does, as it happened
    tokens = "".join(e.text for e in events if e.kind == "token")
    assert "The liver volume is" not in tokens and "The liver measures" in tokens
    assert [e.kind for e in events].count("tool_call") == 2
    # the conversation holds the large model's turn only: one question, one answer, one turn
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[-1]["content"] == "The liver measures 1523.4 mL in volume." and conv.turns == [turn]
    assert len(conv.tool_calls) == 1 and "1523.4" in large.calls[1][-1]["content"]


def test_a_failed_constraint_or_a_grounding_correction_escalates_the_turn(registry):
    local, large = _local(math.log(0.95), fail_constraints=True), _large()
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big"))
    _, turn = _run(router, _conversation(), "What is the liver volume?", local, registry)
    assert turn.answered_by == "large" and turn.routing.reasons == ("constraint_failed",)
    assert turn.escalation_reason == "a decoding check failed"

    # a number no result has: the grounding step drops the sentence, and the turn goes to the large model
    wrong = Scripted("local-small", [CALL, "The liver volume is 2000 mL."], math.log(0.95))
    _, turn = _run(Router(_large(), router.config), _conversation(), "What is the liver volume?", wrong, registry)
    assert turn.answered_by == "large" and turn.routing.reasons == ("text_dropped",)
    assert "2000" not in turn.answer and turn.answer.startswith("The liver measures 1523.4 mL")


def test_a_question_family_outside_the_local_models_scope_goes_to_the_large_model_without_the_local_one(registry):
    local, large = _local(), _large()
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", escalate_families=("volume",)))
    _, turn = _run(router, _conversation(), "What is the liver volume?", local, registry)
    assert local.calls == [] and len(large.calls) == 2
    assert turn.answered_by == "large" and turn.routing.reasons == ("out_of_scope",) and turn.routing.family == "volume"
    assert turn.escalation_reason == "question outside the local model's scope (volume)"


def test_a_backend_without_token_probabilities_is_judged_by_the_other_rules_unless_told_to_escalate(registry):
    config = RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6)
    _, turn = _run(Router(_large(), config), _conversation(), "What is the liver volume?", _local(None), registry)
    assert turn.answered_by == "local" and turn.routing.confidence is None and turn.routing.reasons == ()
    strict = RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", escalate_unknown_confidence=True)
    _, turn = _run(Router(_large(), strict), _conversation(), "What is the liver volume?", _local(None), registry)
    assert turn.answered_by == "large" and turn.escalation_reason == "the local model's confidence is not available"


def test_small_only_records_what_would_have_escalated_and_answers_locally_as_it_streams(registry):
    local = _local(math.log(0.3))
    router = Router(None, RoutingConfig(policy="small-only", min_token_confidence=0.6))
    events, turn = _run(router, _conversation(), "What is the liver volume?", local, registry)
    assert turn.answered_by == "local" and turn.routing.reasons == ("low_confidence",) and not turn.routing.escalated
    assert turn.routing.line() == "Answered by: local model" and turn.escalation_reason == ""


def test_large_only_sends_every_model_turn_to_the_large_model_and_a_refusal_to_none(registry):
    local, large = _local(), _large()
    router = Router(large, RoutingConfig(policy="large-only", large_lm_url="http://big:8000/v1", large_lm_model="big"))
    _, turn = _run(router, _conversation(), "What is the liver volume?", local, registry)
    assert local.calls == [] and turn.answered_by == "large" and turn.routing.line() == "Answered by: large model (site policy)"
    _, refused = _run(router, _conversation(), "What is the patient's name?", local, registry)
    assert refused.answered_by == "" and refused.routing.line() == "" and "refusal: identity" in refused.flags


def test_when_the_large_model_fails_the_local_answer_stands_and_says_why_it_was_asked(registry):
    local = _local(math.log(0.41))
    large = Scripted("large-vlm", [], error=ConnectionError("large model unreachable"))
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6))
    conv = _conversation()
    events, turn = _run(router, conv, "What is the liver volume?", local, registry)
    assert turn.answered_by == "local" and turn.routing.large_failed == "ConnectionError"
    assert turn.answer.startswith("The liver volume is 1523.4 mL.") and conv.turns == [turn]
    assert turn.routing.line() == ("Answered by: local model (the large model failed: ConnectionError; asked because low "
                                   "confidence 0.41 < 0.60)")
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_a_study_chat_with_a_router_routes_its_turns(registry):
    from data.study import Series, Study

    volume = _conversation().volumes["CT"]
    study = Study("2.25.1", [Series("2.25.2", "CT", "abdomen", volume)])
    large = _large()
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6))
    turn = StudyChat(_local(math.log(0.2)), registry, study, router=router).ask("What is the liver volume?")
    assert turn.answered_by == "large" and len(large.calls) == 2


def test_token_probabilities_are_averaged_or_the_least_sure_one_taken_and_missing_ones_make_them_unavailable():
    lp = TokenLogprobs()
    lp.extend([math.log(0.5), math.log(1.0)])
    assert lp.probability("mean") == pytest.approx(0.75) and lp.probability("min") == pytest.approx(0.5)
    lp.extend([None])
    assert lp.probability("mean") is None
    assert TokenLogprobs().probability() is None  # nothing generated: nothing to judge


@pytest.mark.parametrize("settings, message", [
    ({"policy": "large-first"}, "routing.policy must be one of small-first, large-only, small-only"),
    ({"min_token_confidence": 1.5}, "routing.min_token_confidence must be >= 0 and <= 1"),
    ({"escalate_on": ("low_mood",)}, "routing.escalate_on must hold only"),
    ({"escalate_families": ("identity",)}, "routing.escalate_families must hold intent families a model answers"),
    ({"policy": "large-only"}, "routing.large_lm_url is empty"),
    ({"large_lm_url": "gpu-node:8000"}, "routing.large_lm_url must be an http(s) API root"),
])
def test_routing_settings_that_cannot_work_are_refused_naming_the_setting(settings, message):
    with pytest.raises(RoutingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RoutingConfig(**settings).check()


def test_the_decision_goes_to_the_audit_log_as_codes_numbers_and_the_intent_family_only():
    decision = RoutingDecision("large", True, ("low_confidence", "text_dropped"), 0.4123, 0.6, "volume")
    assert decision.to_json() == {"answered_by": "large", "escalated": True, "reasons": ["low_confidence", "text_dropped"],
                                  "confidence": 0.4123, "threshold": 0.6, "family": "volume", "policy": "small-first",
                                  "large_failed": ""}
    assert decision.reason_text() == "low confidence 0.41 < 0.60; model text unsupported by the results was dropped"


def test_the_escalation_log_keeps_the_large_models_turn_and_the_local_attempt(registry, tmp_path):
    log = EscalationLog(tmp_path / "escalations.jsonl")
    router = Router(_large(), RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6,
                                            log_escalations_to=log.path), log)
    _, turn = _run(router, _conversation(), "What is the liver volume?", _local(math.log(0.41)), registry)
    _run(router, _conversation(), "What is the liver volume?", _local(math.log(0.9)), registry)  # kept local: not logged
    (record,) = log.read()
    assert record["reasons"] == ["low_confidence"] and record["family"] == "volume" and record["local_confidence"] == 0.41
    assert [m["role"] for m in record["prompt"]] == ["system"] and record["question"] == "What is the liver volume?"
    assert [m["role"] for m in record["turn"]] == ["user", "assistant", "tool", "assistant"]
    assert record["turn"][0]["images"] == 1 and "1523.4" in record["turn"][2]["content"]
    assert record["tool_calls"][0]["name"] == "ct_segmentation" and record["tool_calls"][0]["result"]["expert"] == "ct_segmentation"
    assert record["answer"] == turn.answer and record["local"]["answer"].startswith("The liver volume is 1523.4 mL.")
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_no_name_record_number_or_birth_date_of_a_question_survives_in_the_escalation_log(registry, tmp_path):
    from pydicom.dataset import Dataset

    from data.deid import deidentify

    # the study was ingested here: its patient's identity is in the process's re-identification keyring
    original = Dataset()
    original.PatientName, original.PatientID, original.PatientBirthDate = "Doe^Jane", "MRN0042", "19610304"
    original.AccessionNumber, original.StudyInstanceUID, original.Modality = "ACC77120", "1.2.840.99.1", "CT"
    study_uid = str(deidentify(original).StudyInstanceUID)
    log = EscalationLog(tmp_path / "escalations.jsonl")
    config = RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="big", min_token_confidence=0.6,
                           log_escalations_to=log.path)
    conv = _conversation(study_uid)
    history = "Is jane doe's spleen normal (ACC77120)?"
    _run(Router(_large(), config, log), conv, history, _local(math.log(0.9)), registry)  # kept local, but in the history
    # (a question that asks for or names an MRN, a birth date or an accession number is refused as identity, before any
    # model; these carry identifiers without asking about them)
    question = ("For Mrs. Jane Doe, record 00123456, born 03/04/1961 (4 March 1961), ref PT-884211, jane.doe@example.org: "
                "what is the liver volume?")
    echoing = Scripted("large-vlm", [CALL, "For jane doe, MRN 00123456, born 1961-03-04: the liver is 1523.4 mL."])
    _run(Router(echoing, config, log), conv, question, _local(math.log(0.2)), registry)
    text = log.path.read_text()
    (record,) = log.read()
    for phi in ("Jane", "jane", "Doe", "00123456", "03/04/1961", "4 March 1961", "1961-03-04", "19610304", "PT-884211",
                "884211", "jane.doe@example.org", "ACC77120", "MRN0042"):
        assert phi.lower() not in text.lower(), phi
    # what the question asks, and the expert's numbers, are kept for training
    assert record["question"].endswith("what is the liver volume?") and "[name]" in record["question"]
    assert "1523.4 mL" in record["answer"] and record["tool_calls"][0]["result"]["measurements"]
    assert any("spleen" in m["content"] for m in record["prompt"] if m["role"] == "user")
