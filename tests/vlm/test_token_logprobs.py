"""Backends report the log-probabilities of the tokens they generate (``TokenLogprobs``), the confidence a router can
read; where they cannot, the record says "not available" rather than a number."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlm.backends.base import GenerationConfig, TokenLogprobs
from vlm.backends.hf_vlm import HFVLMBackend
from vlm.backends.openai_api import OpenAIChatBackend
from vlm.generate import generation_kwargs, threaded_generate

IMG = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)


def test_the_in_process_generation_records_each_generated_tokens_log_probability_under_the_model(make, m3_tokenizer):
    llm = make.llama(len(m3_tokenizer))
    prompt = torch.tensor([m3_tokenizer.encode("The liver volume is")])
    kwargs = generation_kwargs(m3_tokenizer, GenerationConfig(max_new_tokens=6), [], None, prompt.shape[1])
    kwargs.update(input_ids=prompt, attention_mask=torch.ones_like(prompt))
    result, logprobs = {}, TokenLogprobs()
    list(threaded_generate(llm, m3_tokenizer, kwargs, result, logprobs))
    sequence = result["ids"]  # the ids still come back as a tensor, prompt first
    generated = sequence[0, prompt.shape[1]:]
    assert isinstance(sequence, torch.Tensor) and len(logprobs.values) == len(generated) == 6
    with torch.no_grad():  # the same probabilities from one plain forward pass over prompt + answer
        steps = llm(sequence).logits[0, prompt.shape[1] - 1:-1].float()
    expected = torch.log_softmax(steps, -1).gather(1, generated[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs.values), expected, atol=1e-4)


def test_m3s_own_backend_reports_its_answers_token_probabilities_without_changing_the_answer(tiny_m3):
    backend = HFVLMBackend(tiny_m3)
    assert backend.info.token_logprobs
    messages = [{"role": "system", "content": "You are m3."}, {"role": "user", "content": "<image>\nWhat is the liver volume?"}]
    plain = "".join(backend.stream_chat(messages, [IMG], config=GenerationConfig(max_new_tokens=5)))
    logprobs = TokenLogprobs()
    text = "".join(backend.stream_chat(messages, [IMG], config=GenerationConfig(max_new_tokens=5), logprobs=logprobs))
    assert text == plain  # asking for the probabilities does not change the answer
    assert 1 <= len(logprobs.values) <= 5 and all(v <= 0 for v in logprobs.values)
    confidence = logprobs.probability("mean")
    assert 0 < confidence <= 1 and logprobs.probability("min") <= confidence


class _Response:
    def __init__(self, status, lines=(), body=None):
        self.status_code, self._lines, self._body = status, list(lines), body

    def iter_lines(self, decode_unicode=True):
        return iter(self._lines)

    def json(self):
        return self._body

    def close(self):
        pass


class _Session:
    """A ``requests.Session`` stand-in that answers each POST with the next response and records the payloads."""

    def __init__(self, *responses):
        self.responses, self.payloads, self.headers = list(responses), [], {}

    def request(self, method, url, timeout=None, json=None, **kwargs):
        self.payloads.append(dict(json or {}))  # as sent (the client may change its dict afterwards)
        return self.responses.pop(0)


def _stream(*chunks):
    return [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]


def _chunk(text, logprobs=None):
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t, lp in logprobs]}
    return {"choices": [choice]}


def test_a_remote_model_is_asked_for_logprobs_and_its_streamed_tokens_probabilities_are_kept():
    session = _Session(_Response(200, _stream(_chunk("The liver", [("The", math.log(0.9)), (" liver", math.log(0.6))]),
                                              _chunk(" is", [(" is", math.log(0.3))]))))
    backend = OpenAIChatBackend("http://gpu:8000/v1", "big", session=session)
    logprobs = TokenLogprobs()
    assert "".join(backend.stream_chat([{"role": "user", "content": "Liver?"}], logprobs=logprobs)) == "The liver is"
    assert session.payloads[0]["logprobs"] is True
    assert logprobs.probability("mean") == pytest.approx(0.6) and logprobs.probability("min") == pytest.approx(0.3)
    # not asked: not requested
    session = _Session(_Response(200, _stream(_chunk("Yes."))))
    list(OpenAIChatBackend("http://gpu:8000/v1", "big", session=session).stream_chat([{"role": "user", "content": "Liver?"}]))
    assert "logprobs" not in session.payloads[0]


def test_a_remote_model_that_refuses_or_omits_logprobs_gives_an_answer_with_confidence_not_available():
    refusal = {"error": {"message": "logprobs and top_logprobs are not supported by m3 serve-lm.", "type": "invalid_request_error"}}
    session = _Session(_Response(400, body=refusal), _Response(200, _stream(_chunk("Yes."))), _Response(200, _stream(_chunk("No."))))
    backend = OpenAIChatBackend("http://gpu:8000/v1", "m3-lm", session=session)
    first, second = TokenLogprobs(), TokenLogprobs()
    assert "".join(backend.stream_chat([{"role": "user", "content": "Liver?"}], logprobs=first)) == "Yes."
    assert "".join(backend.stream_chat([{"role": "user", "content": "Spleen?"}], logprobs=second)) == "No."
    assert [("logprobs" in p) for p in session.payloads] == [True, False, False]  # asked once, then not again
    assert first.probability() is None and second.probability() is None
    omitted = TokenLogprobs()
    session = _Session(_Response(200, _stream(_chunk("Yes."))))
    list(OpenAIChatBackend("http://gpu:8000/v1", "big", session=session).stream_chat([{"role": "user", "content": "x"}], logprobs=omitted))
    assert omitted.probability() is None and not omitted.available
