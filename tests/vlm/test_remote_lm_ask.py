"""`m3 ask --lm-url` end to end: the shipped default model behind m3 serve-lm (on a localhost port) answers a CT
question while the CT expert runs in the asking process, and the answer is the one the same model gives in process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import openai
import uvicorn
from localhost import free_port

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "vlm" / "weights" / "default"


def _recording(app, bodies: list[dict]):
    """The ASGI ``app`` with every chat-completions request body kept in ``bodies`` (what went over the wire)."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await app(scope, receive, send)
        parts: list[bytes] = []

        async def recorded():
            message = await receive()
            if message["type"] == "http.request":
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    bodies.append(json.loads(b"".join(parts)))
            return message

        return await app(scope, recorded, send)

    return asgi


def test_m3_ask_through_serve_lm_answers_as_the_model_in_process_with_the_expert_run_here(tmp_path):
    from app.main import main
    from data.phantoms import DICOM_DIRNAME, generate, write_study
    from vlm.backends import load_backend
    from vlm.lm_server import create_app

    study = write_study(generate("ct", 7), tmp_path / "study") / DICOM_DIRNAME
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "liver", "question": "What is the liver volume?", "expect_expert": "ct_segmentation",
                                     "expect": "mL"}) + "\n")
    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    assert main(["ask", str(study), "--questions", str(questions), "--out", str(local_out)]) == 0

    bodies: list[dict] = []
    port = free_port()
    app = _recording(create_app(load_backend(DEFAULT_MODEL), model_name="m3-default"), bodies)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "m3 serve-lm did not start"
            time.sleep(0.05)
        assert main(["ask", str(study), "--questions", str(questions), "--out", str(remote_out),
                     "--lm-url", f"http://127.0.0.1:{port}/v1", "--lm-model", "m3-default"]) == 0
        # the agent's first request again, through the openai client: the shipped model's call as tool_calls
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        request = {k: v for k, v in bodies[0].items() if k != "stream"}
        called = client.chat.completions.create(**request)
        short = client.chat.completions.create(**{**request, "max_tokens": 3})
    finally:
        server.should_exit = True
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "ct_segmentation"
    assert choice.message.tool_calls[0].id.startswith("call_") and choice.model_extra["stop_reason"] == "</tool_call>"
    assert called.usage.prompt_tokens > 64 and 0 < called.usage.completion_tokens < request["max_tokens"]
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3

    local, remote = (json.loads(p.read_text()) for p in (local_out, remote_out))  # one line each
    assert remote["answer"] == local["answer"] and "mL" in remote["answer"] and remote["passed"] is True
    def calls(record):  # what each expert call asked and found (its timing aside)
        return [(c["name"], c["arguments"], {k: v for k, v in c["result"].items() if k != "seconds"}) for c in record["tool_calls"]]

    assert calls(remote) == calls(local) and calls(remote)[0][0] == "ct_segmentation"
    assert remote["flags"] == local["flags"] + ["constraints not applied (remote model)"]
    # on the wire: the model's call went out as tool_calls, the expert's result came back under the same id
    first, second = bodies[:2]
    assert [t["function"]["name"] for t in first["tools"]] == ["ct_segmentation"]
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == tool["tool_call_id"] == "call00001"
    assert assistant["tool_calls"][0]["function"]["name"] == "ct_segmentation" and assistant["content"] is None
    assert [p["type"] for p in tool["content"]] == ["image_url", "text"]  # the overlay and the result
    assert "liver volume" in tool["content"][1]["text"]
