"""Remote LM, local experts: the agent talks to an OpenAI-compatible server (vLLM's answer shapes replayed from
tests/vlm/data/vllm_tool_call.json, and m3 serve-lm itself) while the experts run in this process; tool calls go out
as ``tool_calls`` with ids and come back answered by tool messages carrying the same ids."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import openai
import pytest

from data.study import Volume
from stand_in_experts import LiverCT
from experts.registry import ExpertRegistry
from vlm.agent import REMOTE_UNCONSTRAINED, Agent
from vlm.backends.base import BackendInfo, GenerationConfig
from vlm.backends.openai_api import OpenAIChatBackend, RemoteBackendError, connect, to_openai_messages
from vlm.conversation import Conversation

VLLM = json.loads((Path(__file__).parent / "data" / "vllm_tool_call.json").read_text())
CALL = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call>'




class Replay:
    """An HTTP server that answers each POST with the next scripted stream of chunks and records the request bodies."""

    def __init__(self, *streams: list[dict], status: int = 200, models: list[str] | None = None) -> None:
        self.streams, self.requests = list(streams), []
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._json(status, {"object": "list", "data": [{"id": m, "object": "model"} for m in models or [VLLM["model"]]]})

            def do_POST(self):
                replay.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in replay.streams.pop(0):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, code, body):
                data = json.dumps(body if code == 200 else {"error": {"message": "bad key"}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()


def test_the_agent_runs_the_expert_here_for_a_vllm_tool_call_and_answers_it_by_id():
    replay = Replay(VLLM["tool_call_stream"], VLLM["answer_stream"])
    registry = ExpertRegistry()
    registry.register("ct_segmentation", LiverCT)
    conversation = Conversation(volumes={"CT": Volume(np.zeros((8, 8, 4), np.float32), np.eye(4), modality="CT")},
                                images=[np.zeros((16, 16), np.uint8)])
    runs = LiverCT.runs
    try:
        turn = Agent(OpenAIChatBackend(replay.url, VLLM["model"]), registry).run_turn(conversation, "What is the liver volume?")
    finally:
        replay.close()
    assert LiverCT.runs == runs + 1  # the expert ran in this process
    [call] = turn.tool_calls
    assert call.name == "ct_segmentation" and call.arguments == {"targets": "liver"} and call.result is not None
    assert "1523.4 mL" in turn.answer and REMOTE_UNCONSTRAINED in turn.flags
    first, second = replay.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["ct_segmentation"] and first["stream"] is True
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    [sent] = assistant["tool_calls"]
    assert sent["id"] == tool["tool_call_id"] == "call00001" and sent["type"] == "function"
    assert sent["function"]["name"] == "ct_segmentation" and json.loads(sent["function"]["arguments"]) == {"targets": "liver"}
    assert tool["role"] == "tool" and tool["name"] == "ct_segmentation" and "liver volume: 1523.4 mL" in json.dumps(tool["content"])
    assert second["messages"][1]["content"][0]["type"] == "image_url"  # the slice went as a data URL
    assert second["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_serve_lm_answers_a_tool_call_in_the_shape_vllm_answers_it(tmp_path):
    """The recorded vLLM response and m3 serve-lm's answer to the same model text: both valid ChatCompletion objects
    with the same fields, and both streams read by the client as the same agent text."""
    import uvicorn
    from localhost import free_port
    from openai.types.chat import ChatCompletion

    from vlm.lm_server import create_app

    class Writes:
        info = BackendInfo(name=VLLM["model"])

        def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None):
            yield from (CALL[:20], CALL[20:])

    vllm = ChatCompletion.model_validate(VLLM["tool_call_response"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Writes()), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        while not server.started:
            threading.Event().wait(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        tools = [{"type": "function", "function": {"name": "ct_segmentation", "parameters": {"type": "object"}}}]
        ours = openai.OpenAI(base_url=url, api_key="x").chat.completions.create(
            model=VLLM["model"], messages=[{"role": "user", "content": "liver volume?"}], tools=tools)
        served_text = "".join(OpenAIChatBackend(url, VLLM["model"]).stream_chat([{"role": "user", "content": "q"}], tools=tools))
    finally:
        server.should_exit = True
    replay = Replay(VLLM["tool_call_stream"])
    try:
        vllm_text = "".join(OpenAIChatBackend(replay.url, VLLM["model"]).stream_chat([{"role": "user", "content": "q"}], tools=tools))
    finally:
        replay.close()
    for answer in (vllm, ours):
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls[0].function.name == "ct_segmentation"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"targets": "liver"}
        assert "stop_reason" in choice.model_extra and answer.usage is not None
    assert set(ours.model_dump(exclude_unset=True)) == set(VLLM["tool_call_response"]) - {"prompt_logprobs"}
    assert served_text == vllm_text == CALL


def test_agent_history_goes_out_with_tool_calls_and_the_ids_the_tool_messages_carry():
    two = CALL + CALL.replace("liver", "everything")
    history = [
        {"role": "system", "content": "You are m3."},
        {"role": "user", "content": "<image>\nliver?", "images": ["pixels"]},
        {"role": "assistant", "content": "Measuring. " + two},
        {"role": "tool", "name": "ct_segmentation", "content": "liver 1523.4 mL"},
        {"role": "tool", "name": "ct_segmentation", "content": "everything"},
        {"role": "assistant", "content": "The liver volume is 1523.4 mL."},
        {"role": "user", "content": "and again?"},
        {"role": "assistant", "content": '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": </tool_call>'},
        {"role": "tool", "name": "unknown", "content": '{"error": "could not parse"}'},
        {"role": "assistant", "content": "<VISTA3D(liver)>"},
        {"role": "tool", "name": "ct_segmentation", "content": "liver 1523.4 mL"},
    ]
    out = to_openai_messages(history, [np.zeros((4, 4), np.uint8)])
    first = out[2]
    assert first["content"] == "Measuring. " and "images" not in out[1]
    assert [c["id"] for c in first["tool_calls"]] == ["call00001", "call00002"]
    assert [json.loads(c["function"]["arguments"]) for c in first["tool_calls"]] == [{"targets": "liver"}, {"targets": "everything"}]
    assert [out[3]["tool_call_id"], out[4]["tool_call_id"]] == ["call00001", "call00002"]
    assert "tool_calls" not in out[5]
    broken = out[7]  # a call the agent could not read still pairs with its error message
    assert broken["content"] is None and broken["tool_calls"][0]["id"] == out[8]["tool_call_id"] == "call00003"
    assert broken["tool_calls"][0]["function"]["arguments"] == "{}"
    assert out[9] == {"role": "assistant", "content": "<VISTA3D(liver)>"}  # a VILA-M3 trigger stays the model's text
    assert out[10]["tool_call_id"] == "call00004"
    assert history[2]["content"] == "Measuring. " + two  # the agent's own history is untouched


def test_a_stop_string_the_server_cut_reaches_the_agent_as_an_in_process_model_writes_it():
    stream = [{"choices": [{"index": 0, "delta": {"content": '<tool_call>{"name": "ct_segmentation", "arguments": {}}'}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "</tool_call>"}]}]
    replay = Replay(stream, [dict(c) for c in stream[:1]] + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])
    try:
        backend = OpenAIChatBackend(replay.url, VLLM["model"])
        config = GenerationConfig(stop=["</tool_call>", ")>"])
        named = "".join(backend.stream_chat([{"role": "user", "content": "q"}], config=config))
        unnamed = "".join(backend.stream_chat([{"role": "user", "content": "q"}], config=config))
    finally:
        replay.close()
    assert named == '<tool_call>{"name": "ct_segmentation", "arguments": {}}</tool_call>'
    assert unnamed == '<tool_call>{"name": "ct_segmentation", "arguments": {}}'  # an EOS, not a stop string: nothing added
    assert replay.requests[0]["stop"] == ["</tool_call>", ")>"]


def test_connect_refuses_a_wrong_model_or_key_and_waits_for_a_server_not_up_yet():
    replay = Replay(models=["m3-8b"])
    try:
        assert connect(replay.url, "m3-8b").model == "m3-8b"
        with pytest.raises(RemoteBackendError, match="does not serve the model 'm3-4b'; it serves 'm3-8b'"):
            connect(replay.url, "m3-4b")
    finally:
        replay.close()
    refusing = Replay(status=401)
    try:
        with pytest.raises(RemoteBackendError, match="answered 401 \\(check the API key\\)"):
            connect(refusing.url, "m3-8b", api_key="wrong")
    finally:
        refusing.close()
    from localhost import free_port

    later = connect(f"http://127.0.0.1:{free_port()}/v1", "m3-8b")  # not up yet: the app still starts
    with pytest.raises(RemoteBackendError, match="unreachable"):
        list(later.stream_chat([{"role": "user", "content": "q"}]))
