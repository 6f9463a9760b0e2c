"""m3 serve-lm (vlm.lm_server) seen through the `openai` Python client: tool calls with ids, finish reasons, usage,
404 / 400 / 429, the queue. The served backend is a scripted stand-in with a word tokenizer (it writes what each test
gives it); the server, the protocol and the client are the real ones."""

from __future__ import annotations

import json
import re
import threading
import time

import openai
import pytest
from localhost import serve_in_thread

from vlm.backends.base import BackendInfo
from vlm.lm_server import create_app

MODEL = "m3-test"
TOOLS = [{"type": "function", "function": {"name": "ct_segmentation", "description": "CT organs",
                                           "parameters": {"type": "object", "properties": {"targets": {"type": "string"}}}}}]
CALL = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call>'
USER = [{"role": "user", "content": "What is the liver volume?"}]


class WordTokenizer:
    """One token per whitespace-separated word."""

    def encode(self, text, add_special_tokens=False):
        return text.split()


class ScriptedModel:
    """Writes ``reply`` word by word (at most max_new_tokens words, ``delay_s`` apart) and records each request."""

    def __init__(self, reply: str = "The liver volume is 1523.4 mL.", delay_s: float = 0.0) -> None:
        self.info = BackendInfo(name=MODEL)
        self.tokenizer = WordTokenizer()
        self.reply, self.delay_s = reply, delay_s
        self.calls: list[dict] = []
        self.spans: list[tuple[float, float]] = []

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None):
        start = time.monotonic()
        self.calls.append({"messages": messages, "tools": tools, "config": config})
        for piece in re.findall(r"\S+\s*", self.reply)[: config.max_new_tokens]:
            time.sleep(self.delay_s)
            yield piece
        self.spans.append((start, time.monotonic()))


@pytest.fixture
def serve():
    servers = []

    def start(backend, **kwargs):
        app = create_app(backend, **kwargs)
        server, port = serve_in_thread(app)
        servers.append(server)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30), app

    yield start
    for server in servers:
        server.should_exit = True


def test_serve_lm_returns_tool_calls_with_ids_and_finish_reason_tool_calls(serve):
    model = ScriptedModel("Let me measure. " + CALL + " " + CALL.replace("liver", "spleen"))
    client, _ = serve(model)
    response = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me measure. "
    first, second = choice.message.tool_calls
    assert first.id.startswith("call_") and second.id.startswith("call_") and first.id != second.id
    assert first.type == "function" and first.function.name == "ct_segmentation"
    assert json.loads(first.function.arguments) == {"targets": "liver"} and json.loads(second.function.arguments) == {"targets": "spleen"}
    assert response.usage.completion_tokens == len(model.reply.split())
    assert response.usage.prompt_tokens == len(USER[0]["content"].split())
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert [t["function"]["name"] for t in model.calls[0]["tools"]] == ["ct_segmentation"]
    only = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, parallel_tool_calls=False)
    assert len(only.choices[0].message.tool_calls) == 1


def test_a_call_alone_has_null_content_and_streams_as_a_tool_call_delta(serve):
    client, _ = serve(ScriptedModel(CALL))
    assert client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS).choices[0].message.content is None
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert content == "" and "<tool_call" not in json.dumps([c.model_dump() for c in chunks])
    [call] = deltas
    assert call.index == 0 and call.id.startswith("call_") and call.function.name == "ct_segmentation"
    assert json.loads(call.function.arguments) == {"targets": "liver"}
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(CALL.split())
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_text_before_a_call_is_content_and_the_call_is_never_shown(serve):
    client, _ = serve(ScriptedModel("Measuring the liver now. " + CALL))
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Measuring the liver now. "
    assert sum(len(c.choices[0].delta.tool_calls or []) for c in chunks) == 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_call_text_stays_content_without_tools_or_when_it_cannot_be_read(serve):
    client, _ = serve(ScriptedModel(CALL))
    plain = client.chat.completions.create(model=MODEL, messages=USER)  # no tools offered: nothing to parse
    assert plain.choices[0].message.content == CALL and plain.choices[0].finish_reason == "stop"
    assert not plain.choices[0].message.tool_calls
    none = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.content == CALL
    broken = '<tool_call>{"name": "ct_segmentation", "arguments": {"targets": </tool_call>'
    client, _ = serve(ScriptedModel(broken))
    bad = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    assert bad.choices[0].message.content == broken and bad.choices[0].finish_reason == "stop"


def test_max_tokens_reached_is_finish_reason_length(serve):
    client, _ = serve(ScriptedModel("one two three four five six seven eight nine ten"))
    cut = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == "one two three four "
    assert cut.usage.completion_tokens == 4
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=50)
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens == 10
    streamed = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, stream=True))
    assert streamed[-1].choices[0].finish_reason == "length"


def test_a_stop_string_is_cut_and_named_in_stop_reason(serve):
    client, _ = serve(ScriptedModel("alpha beta END gamma delta"))
    response = client.chat.completions.create(model=MODEL, messages=USER, stop=["END"])
    assert response.choices[0].message.content == "alpha beta " and response.choices[0].finish_reason == "stop"
    assert response.choices[0].model_extra["stop_reason"] == "END"
    # a stop string over two pieces: "beta " is held back until "END" shows it was the start of the stop string
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stop="beta END", stream=True))
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == ["alpha "]
    assert chunks[-1].choices[0].model_extra["stop_reason"] == "beta END"


def test_unknown_model_names_are_404(serve):
    client, _ = serve(ScriptedModel())
    with pytest.raises(openai.NotFoundError, match="The model `gpt-4o` does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve(MODEL).id == MODEL and [m.id for m in client.models.list()] == [MODEL]


@pytest.mark.parametrize("kwargs,names", [
    ({"n": 2}, "n must be 1"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format must be text"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice must be auto or none"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"stream_options": {"include_usage": True}}, "stream_options is only allowed when stream is true"),
    ({"extra_body": {"top_k": 5}}, "unsupported parameter(s): top_k"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_parameters_the_server_cannot_honour_are_400(serve, kwargs, names):
    model = ScriptedModel()
    client, _ = serve(model)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, **kwargs)
    assert names in info.value.message
    assert model.calls == []  # refused before the model ran


def test_a_full_queue_answers_429_naming_the_limit_and_admitted_requests_take_turns(serve):
    model = ScriptedModel("one two three four five", delay_s=0.15)
    client, app = serve(model, max_concurrency=1, max_queue=1)
    results: dict[str, object] = {}

    def ask(name):
        try:
            results[name] = client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
        except openai.APIStatusError as exc:
            results[name] = exc

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    _wait(lambda: len(model.calls) == 1)  # generating
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    _wait(lambda: app.state.admission.admitted == 2)  # waiting its turn
    ask("third")
    first.join()
    second.join()
    busy = results["third"]
    assert isinstance(busy, openai.RateLimitError) and busy.status_code == 429
    assert "--max-concurrency 1, --max-queue 1" in busy.message and busy.response.headers["retry-after"] == "2"
    assert results["first"] == results["second"] == "one two three four five"
    (_, a_end), (b_start, _) = sorted(model.spans)
    assert b_start >= a_end  # one generation at a time
    assert app.state.admission.admitted == 0  # every place was given back
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content  # and new requests go in


def test_tool_calls_and_results_sent_back_reach_the_model_as_the_agents_text(serve):
    model = ScriptedModel()
    client, _ = serve(model)
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc", "type": "function",
                                                               "function": {"name": "ct_segmentation", "arguments": '{"targets": "liver"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "liver volume: 1523.4 mL"},
    ]
    client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    seen = model.calls[0]["messages"]
    assert seen[1] == {"role": "assistant", "content": CALL}
    assert seen[2] == {"role": "tool", "content": "liver volume: 1523.4 mL"}
    with pytest.raises(openai.BadRequestError, match="arguments must be a JSON object string"):
        bad = [dict(history[1], tool_calls=[{"id": "x", "type": "function", "function": {"name": "ct_segmentation", "arguments": "{oops"}}])]
        client.chat.completions.create(model=MODEL, messages=USER + bad)


@pytest.mark.parametrize("content,names", [
    ([{"type": "image_url", "image_url": {}}], "images must be sent inline as data:image"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGEgcG5n"}}], "could not be decoded"),
    ([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], "content part type 'input_audio' is not supported"),
    (42, "must be a string or a list of content parts"),
])
def test_messages_the_model_cannot_read_are_400_not_500(serve, content, names):
    client, _ = serve(ScriptedModel())
    with pytest.raises(openai.BadRequestError, match=re.escape(names)):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])


def _wait(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
