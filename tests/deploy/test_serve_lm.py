"""The remote backend (vlm.backends.openai_api) against m3's own OpenAI-compatible server (vlm.serve_lm)
on localhost: text, images, tools, streaming, keys, errors."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from localhost import serve_in_thread

from vlm.backends.base import BackendInfo, ChatBackend, GenerationConfig
from vlm.backends.openai_api import OpenAIChatBackend, RemoteBackendError
from vlm.serve_lm import create_app


class RecordingBackend:
    """A ChatBackend that answers with what it received, word by word, with a pause between words."""

    def __init__(self, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.info = BackendInfo(name="fake-m3", takes_images=True)
        self.delay_s, self.fail_after = delay_s, fail_after
        self.calls: list[dict] = []
        self.emitted_at: list[float] = []

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None):
        self.calls.append({"messages": messages, "images": images or [], "tools": tools, "config": config})
        shapes = ",".join("x".join(map(str, im.shape)) for im in images or [])
        words = [f"roles={'/'.join(m['role'] for m in messages)}", f"images={shapes or 'none'}",
                 f"tools={','.join(t['function']['name'] for t in tools or []) or 'none'}",
                 f"max={config.max_new_tokens}", "done."]
        for i, word in enumerate(words):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("CUDA out of memory")
            time.sleep(self.delay_s)
            self.emitted_at.append(time.monotonic())
            yield word + (" " if i < len(words) - 1 else "")


def _serve(app) -> tuple[uvicorn.Server, str]:
    server, port = serve_in_thread(app)
    return server, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def lm_server():
    running = []

    def start(backend, **kwargs):
        server, url = _serve(create_app(backend, **kwargs))
        running.append(server)
        return url

    yield start
    for server in running:
        server.should_exit = True


TOOLS = [{"type": "function", "function": {"name": "ct_segmentation", "description": "CT organs", "parameters": {"type": "object"}}}]


def test_client_and_server_round_trip_text_images_and_tools(lm_server):
    backend = RecordingBackend()
    assert isinstance(backend, ChatBackend)
    url = lm_server(backend, api_key="k3y")
    client = OpenAIChatBackend(url, "fake-m3", api_key="k3y")
    assert client.list_models() == ["fake-m3"]
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    messages = [
        {"role": "system", "content": "You are m3."},
        {"role": "user", "content": "<image>\nWhat organ is this?", "images": [gray]},
        {"role": "assistant", "content": '<tool_call>{"name": "ct_segmentation", "arguments": {}}</tool_call>'},
        {"role": "tool", "name": "ct_segmentation", "content": "<image>\nliver volume: 1523.4 mL", "images": [rgb]},
    ]
    pieces = list(client.stream_chat(messages, images=[gray, rgb], tools=TOOLS, config=GenerationConfig(max_new_tokens=77)))
    assert "".join(pieces) == "roles=system/user/assistant/tool images=48x64,32x40x3 tools=ct_segmentation max=77 done."
    assert len(pieces) == 5  # streamed piece by piece, not in one block
    [call] = backend.calls
    np.testing.assert_array_equal(call["images"][0], gray)  # PNG data URLs are lossless
    np.testing.assert_array_equal(call["images"][1], rgb)
    assert call["messages"][1]["content"] == "<image>\nWhat organ is this?"
    assert call["messages"][3] == {"role": "tool", "name": "ct_segmentation", "content": "<image>\nliver volume: 1523.4 mL"}
    assert call["config"].temperature == 0.0


def test_pieces_arrive_while_the_model_is_still_generating(lm_server):
    backend = RecordingBackend(delay_s=0.3)
    client = OpenAIChatBackend(lm_server(backend), "fake-m3")
    stream = client.stream_chat([{"role": "user", "content": "hi"}])
    next(stream)
    first_seen = time.monotonic()
    rest = list(stream)
    assert len(rest) == 4
    assert first_seen < backend.emitted_at[-1] - 0.5  # the first word was here long before the last was made


def test_wrong_key_missing_server_and_bad_images_are_clear(lm_server):
    url = lm_server(RecordingBackend(), api_key="right")
    with pytest.raises(RemoteBackendError, match="answered 401 \\(check the API key\\)"):
        list(OpenAIChatBackend(url, "fake-m3", api_key="wrong").stream_chat([{"role": "user", "content": "hi"}]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(RemoteBackendError, match="unreachable"):
        list(OpenAIChatBackend(dead, "m").stream_chat([{"role": "user", "content": "hi"}]))
    client = OpenAIChatBackend(url, "fake-m3", api_key="right")
    with pytest.raises(RemoteBackendError, match="1 images were given but the messages hold 0"):
        list(client.stream_chat([{"role": "user", "content": "hi"}], images=[np.zeros((4, 4), np.uint8)]))
    remote = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.org/x.png"}}]}
    refused = client.session.post(url + "/chat/completions", json={"model": "fake-m3", "messages": [remote]})
    assert refused.status_code == 400 and "fetches no remote URLs" in refused.json()["error"]["message"]


def test_a_model_failure_mid_stream_reaches_the_client(lm_server):
    client = OpenAIChatBackend(lm_server(RecordingBackend(fail_after=2)), "fake-m3")
    got = []
    with pytest.raises(RemoteBackendError, match="CUDA out of memory"):
        for piece in client.stream_chat([{"role": "user", "content": "hi"}]):
            got.append(piece)
    assert len(got) == 2


def test_non_streaming_requests_get_one_completion(lm_server):
    client = OpenAIChatBackend(lm_server(RecordingBackend()), "fake-m3")
    body = client.session.post(client.base_url + "/chat/completions",
                               json={"model": "fake-m3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"].endswith("max=5 done.")


def test_server_side_tool_calls_become_tool_call_text():
    """vLLM with a tool parser streams ``delta.tool_calls``; the agent gets them as <tool_call> text."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Measuring. "}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                                                        "function": {"name": "ct_segmentation", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"targets": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"liver"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for c in chunks:
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OpenAIChatBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "vllm-model")
        text = "".join(client.stream_chat([{"role": "user", "content": "liver volume?"}], tools=TOOLS))
    finally:
        server.shutdown()
    assert text == 'Measuring. <tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call>'


@pytest.mark.slow
def test_serve_lm_command_serves_a_real_checkpoint_like_in_process(tmp_path):
    """`m3 serve-lm DIR` (a subprocess, the real CLI and loader) on a tiny random m3 checkpoint: the
    remote answer equals the in-process backend's greedy answer for the same image and question."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from vlm.backends.hf_vlm import HFVLMBackend
    from vlm.model import M3Config, M3Model
    from vlm.projector import build_projector
    from vlm.tokenizer import TokenizerConfig, train_tokenizer
    from vlm.vision_tower import VisionTower

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["The liver volume is 1523.4 mL.", "What does this CT image show?"] * 50, None,
                                TokenizerConfig(vocab_size=300))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  image_size=28, patch_size=14)).eval()
    model = M3Model(M3Config(), VisionTower(siglip, kind="siglip_vision_model", image_size=28, hidden_size=16),
                    build_projector("mlp_downsample", 16, 32).eval(), llm, tokenizer).eval()
    ckpt = tmp_path / "tiny-m3"
    model.save_pretrained(ckpt)
    image = np.random.default_rng(1).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": "<image>\nWhat does this CT image show?"}]
    config = GenerationConfig(max_new_tokens=12)
    local = "".join(HFVLMBackend.from_pretrained(ckpt).stream_chat(messages, images=[image], config=config))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "app.main", "serve-lm", str(ckpt), "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "tiny-m3")
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                assert client.list_models() == ["tiny-m3"]
                break
            except RemoteBackendError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read().decode()[-3000:]) from None
                time.sleep(0.3)
        remote = "".join(client.stream_chat(messages, images=[image], config=config))
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert local and remote == local
