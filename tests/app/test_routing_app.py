"""Routing in the app: the chat says which model answered (and why it escalated), the audit log keeps the decision as
codes and the intent family only, and the ``[routing]`` settings load and are checked like the others."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.audit import AuditLog
from app.chat import ChatEngine
from app.config import ConfigError, load_config
from app.session import SessionState
from data.study import Series, Study, Volume
from experts.registry import ExpertRegistry
from vlm.backends.base import BackendInfo
from vlm.routing import RoutingConfig, Router
from vlm.tools import format_tool_call


class Scripted:
    """Calls the threshold expert, then answers with ``answer``; reports ``probability`` per piece when given."""

    def __init__(self, name, answer, probability=None):
        self.answer, self.probability = answer, probability
        self.info = BackendInfo(name=name, version="v1", takes_images=False, token_logprobs=probability is not None)
        self.calls = 0

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None, logprobs=None):
        self.calls += 1
        reply = self.answer if messages[-1]["role"] == "tool" else format_tool_call("threshold_volume", {})
        if logprobs is not None:
            logprobs.extend([math.log(self.probability)] * 4)
        yield reply


def _state():
    array = np.full((8, 8, 4), 200.0, np.float32)
    volume = Volume(array, np.eye(4), modality="CT", study_uid="2.25.10", series_uid="2.25.11")
    state = SessionState()
    state.set_study(Study("2.25.10", [Series("2.25.11", "CT", "abdomen", volume)]))
    return state


def _ask(engine, question):
    *_, (history, _) = engine.stream(_state(), question, user="alice")
    return history[-1]["content"]


@pytest.fixture()
def registry(scripted_module):
    reg = ExpertRegistry()
    reg.register("threshold_volume", scripted_module.ThresholdExpert)
    return reg


def test_the_chat_says_the_large_model_answered_and_why_and_the_audit_log_keeps_codes_only(tmp_path, registry):
    local = Scripted("local-small", "The dense tissue volume is 0.3 mL.", probability=0.41)
    large = Scripted("large-vlm", "Dense tissue measures 0.3 mL.")
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="large-vlm", min_token_confidence=0.6))
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = ChatEngine(local, registry, audit, router=router)
    shown = _ask(engine, "What is the dense tissue volume of Jane Doe?")
    assert shown.startswith("Dense tissue measures") and large.calls == 2
    assert shown.endswith("Answered by: large model (escalated: low confidence 0.41 < 0.60)")
    (entry,) = [r for r in audit.read() if r["event"] == "answer"]
    assert entry["model"] == "large-vlm" and entry["routing"] == {
        "answered_by": "large", "escalated": True, "reasons": ["low_confidence"], "confidence": 0.41, "threshold": 0.6,
        "family": "volume", "policy": "small-first", "large_failed": ""}
    assert "Jane" not in json.dumps(entry["routing"])


def test_the_chat_says_the_local_model_answered_a_confident_turn(tmp_path, registry):
    local = Scripted("local-small", "The dense tissue volume is 0.3 mL.", probability=0.9)
    large = Scripted("large-vlm", "Dense tissue measures 0.3 mL.")
    router = Router(large, RoutingConfig(large_lm_url="http://big:8000/v1", large_lm_model="large-vlm", min_token_confidence=0.6))
    audit = AuditLog(tmp_path / "audit.jsonl")
    shown = _ask(ChatEngine(local, registry, audit, router=router), "What is the dense tissue volume?")
    assert shown.startswith("The dense tissue volume is") and shown.endswith("Answered by: local model") and large.calls == 0
    (entry,) = [r for r in audit.read() if r["event"] == "answer"]
    assert entry["model"] == "local-small" and entry["routing"]["answered_by"] == "local"


def test_without_routing_the_chat_and_the_audit_record_are_as_before(tmp_path, registry):
    audit = AuditLog(tmp_path / "audit.jsonl")
    shown = _ask(ChatEngine(Scripted("local-small", "The dense tissue volume is 0.3 mL."), registry, audit), "What is the dense tissue volume?")
    assert "Answered by" not in shown
    (entry,) = [r for r in audit.read() if r["event"] == "answer"]
    assert "routing" not in entry


def test_routing_settings_load_from_the_file_and_the_environment_with_the_key_from_the_environment_only(tmp_path):
    config_file = tmp_path / "m3.toml"
    config_file.write_text('[routing]\nlarge_lm_url = "http://gpu-node:8000/v1"\nlarge_lm_model = "large-vlm"\n'
                           'min_token_confidence = 0.55\nescalate_families = ["report", "comparison"]\n'
                           f'log_escalations_to = "{tmp_path / "escalations.jsonl"}"\n')
    config = load_config(config_file, env={"M3_LARGE_LM_API_KEY": "secret", "M3_ROUTING_CONFIDENCE_STATISTIC": "min"})
    routing = config.routing
    assert (routing.large_lm_url, routing.large_lm_model, routing.min_token_confidence) == ("http://gpu-node:8000/v1", "large-vlm", 0.55)
    assert routing.escalate_families == ("report", "comparison") and routing.confidence_statistic == "min"
    assert routing.large_lm_api_key == "secret" and routing.log_escalations_to == tmp_path / "escalations.jsonl"
    assert "secret" not in repr(routing)
    config_file.write_text('[routing]\nlarge_lm_api_key = "in-the-file"\n')
    with pytest.raises(ConfigError, match=r"routing.large_lm_api_key must not be in the config file; set \$M3_LARGE_LM_API_KEY"):
        load_config(config_file, env={})
    with pytest.raises(ConfigError, match="routing.min_token_confidence must be >= 0 and <= 1.*from env"):
        load_config(env={"M3_ROUTING_MIN_TOKEN_CONFIDENCE": "60"})


def test_routing_is_off_unless_a_large_model_or_the_recording_policy_is_set():
    from app.server import load_router

    assert load_router(load_config(env={})) is None
    shadow = load_router(load_config(env={"M3_ROUTING_POLICY": "small-only", "M3_ROUTING_MIN_TOKEN_CONFIDENCE": "0.5"}))
    assert shadow is not None and shadow.large is None and shadow.config.policy == "small-only"
