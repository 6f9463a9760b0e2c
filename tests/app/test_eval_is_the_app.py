"""``m3 eval`` takes the app's path: the same three questions asked through the eval harness and through the app's
chat handler (Example CT, brain MRI and chest X-ray, at the slice the question is about) get identical answers
and expert calls, with the embedded default model and the real experts."""

from __future__ import annotations

import json

import pytest

from app.audit import AuditLog
from app.chat import ChatEngine
from app.events import EXAMPLE_SEED, AppEvents, UploadLimits
from app.session import SessionState
from data.display import native_axial_index

ITEMS = [  # (example button, kind, question, axial slice on the volume grid or None)
    ("Example CT", "ct", "What is the liver volume?", 30),
    ("Example brain MRI", "mri", "Is there a brain tumor?", None),
    ("Example chest X-ray", "cxr", "Is there a pleural effusion?", None),
]


class _Request:
    username = "eval-check"


@pytest.fixture(scope="module")
def default_model():
    from app.server import embedded_model_dir
    from vlm.backends import load_backend

    return load_backend(embedded_model_dir())


@pytest.fixture(scope="module")
def real_experts():
    from experts.registry import default_registry

    return default_registry()


def test_eval_and_the_app_give_the_same_answers_and_calls(tmp_path, default_model, real_experts):
    from vlm.eval.harness import evaluate_model

    data = tmp_path / "data"
    data.mkdir()
    records = [{"id": f"q{i}", "meta": {"kind": kind, "seed": EXAMPLE_SEED, "answer_type": "open", "category": "check",
                                        **({"slice_index": k} if k is not None else {})},
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "-"}]}
               for i, (_, kind, q, k) in enumerate(ITEMS)]
    (data / "ift_test.json").write_text(json.dumps(records))
    evaluate_model(default_model, data, tmp_path / "eval", experts="real", progress=False)
    evaluated = json.loads((tmp_path / "eval" / "vqa_answers.json").read_text())

    audit = AuditLog(tmp_path / "audit.jsonl")
    events = AppEvents(ChatEngine(default_model, real_experts, audit), audit, UploadLimits(100, 200))
    for (label, _, question, k), ev in zip(ITEMS, evaluated):
        state = SessionState()
        events.example(label, state, _Request(), progress=lambda *a, **kw: None)
        if k is not None:
            shown = next(i for i in range(state.volume.shape[2]) if native_axial_index(state.volume, i) == k)
            events.set_slice(shown + 1, state)  # the slider counts from 1
        list(events.ask(question, state, _Request()))
        turn = state.chat.conversation.turns[-1]
        assert turn.answer.split("\n\n(Note:")[0].strip() == ev["prediction"], question
        assert [(c.name, c.arguments) for c in turn.tool_calls] == list(zip(ev["called"], ev["arguments"])), question
        assert turn.tool_calls, f"{question}: the model called no expert"
        state.close()
