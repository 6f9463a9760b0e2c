"""One agent context (system prompt + tools), from the model's config, for training, serving and calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.tool_text import Finding, Measurement, ToolResult, format_tool_call, format_tool_result
from vlm.agent_context import AGENT_SYSTEM_PROMPT, agent_context

DEFAULT = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default"
# the system prompt the training data was rendered with before the context had one builder
PROMPT_AS_TRAINED = (
    "You are m3, a medical imaging assistant for clinicians. Look at the images and answer briefly. "
    "When a question needs a measurement, a segmentation or a finding probability, call the matching "
    "expert and answer from its result; quote its numbers with their units and never invent a number. "
    "Output is for research and decision support, not a diagnosis."
)
RECORD = {"id": "case-1", "image": "case-1.png", "conversations": [
    {"from": "human", "value": "<image>\nHow big is the liver?"},
    {"from": "gpt", "value": format_tool_call("ct_segmentation", {"targets": "liver"})},
    {"from": "tool", "value": format_tool_result(ToolResult("ct_segmentation", {"targets": "liver"}, [Finding("liver tumor", False)],
                                                            [Measurement("liver", "volume", 1523.4, "mL")]))},
    {"from": "gpt", "value": "The liver volume is [[liver volume]]."},
]}


def _tools_as_trained() -> list[dict]:
    """The tool list as training built it before: each built-in expert class's name, description and schema."""
    from experts.registry import BUILTIN_EXPERTS, _resolve

    return [{"type": "function", "function": {"name": c.name, "description": c.description, "parameters": dict(c.parameters)}}
            for c in map(_resolve, BUILTIN_EXPERTS.values())]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT / "llm")


def test_a_training_conversation_renders_byte_for_byte_as_it_did_before_the_builder(tokenizer):
    from vlm.train.dataset import tokenize_record

    config = json.loads((DEFAULT / "config.json").read_text())
    context = agent_context(config)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    before = tokenize_record(RECORD, tokenizer, PROMPT_AS_TRAINED, _tools_as_trained(), image_id, 4, 10_000)
    after = tokenize_record(RECORD, tokenizer, context.system_prompt, context.tools, image_id, 4, 10_000)
    assert before.input_ids.tolist() == after.input_ids.tolist() and before.labels.tolist() == after.labels.tolist()
    assert context.system_prompt == AGENT_SYSTEM_PROMPT == PROMPT_AS_TRAINED


def test_the_served_model_gets_the_context_it_was_trained_with():
    from vlm.agent import Agent
    from vlm.backends.base import BackendInfo
    from vlm.conversation import Conversation

    class InProcess:  # stands in for an in-process backend: the model and its config
        def __init__(self, prompt):
            self.model = type("Model", (), {"config": type("Config", (), {"system_prompt": prompt})()})()
            self.info = BackendInfo(name="in-process")
            self.seen = []

        def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None):
            self.seen.append((messages[0], tools))
            yield "Hello."

    class Registry:
        def names(self):
            return []

    for prompt, expected in (("", AGENT_SYSTEM_PROMPT), ("Answer in one sentence.", "Answer in one sentence.")):
        backend = InProcess(prompt)
        Agent(backend, Registry()).run_turn(Conversation(images=[np.zeros((4, 4), np.uint8)]), "What is shown?")
        assert backend.seen[0][0] == {"role": "system", "content": expected}


def test_calibration_and_tokenizer_training_read_the_same_context():
    from vlm.compress.cli import _agent_context
    from vlm.train.build import expert_tool_schemas

    system, tools = _agent_context(DEFAULT)
    assert system == AGENT_SYSTEM_PROMPT and tools == expert_tool_schemas() == _tools_as_trained() == agent_context().tools
    assert [t["function"]["name"] for t in tools] == ["ct_segmentation", "mri_brain_tumor", "cxr_classification"]
