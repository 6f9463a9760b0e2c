"""A remote language model behind an OpenAI-compatible chat API (vLLM's server, ``m3 serve-lm``).

The agent keeps the expert loop, the studies and all PHI handling local; only the de-identified
conversation (text and the pictures it shows: slices, overlays) goes to the endpoint. Images travel
as PNG ``data:`` URLs in ``image_url`` content parts, in the order of the ``<image>`` placeholders.
Answers stream back as server-sent events; tool calls the server parses itself (vLLM with a tool
parser, ``m3 serve-lm``) come back as ``tool_calls`` deltas and are handed to the agent as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text, so the agent's one parser handles both.

On the way out the agent's history is put in the API's form (``to_openai_messages``): an assistant turn's
``<tool_call>`` text becomes its ``tool_calls`` (content: the text before the first call, or null), each with an
id, and the ``tool`` messages that answer them carry the same ids as ``tool_call_id``, in order. The ids are
``call00001``, ``call00002``… by position in the conversation: the same history gives the same request (the
server's prefix cache keeps working) and they are the 9 letters and digits Mistral's templates insist on.

    backend = connect("http://gpu-node:8000/v1", "m3-8b", api_key=os.environ["M3_LM_API_KEY"])
    for piece in backend.stream_chat(messages, images=[slice_rgb]): ...
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import requests

from data.errors import M3Error
from data.tool_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, format_tool_call
from vlm.backends.base import BackendInfo, GenerationConfig, TokenLogprobs

__all__ = ["OpenAIChatBackend", "RemoteBackendError", "connect", "image_data_url", "to_openai_messages", "tool_call_id",
           "IMAGE_PLACEHOLDER"]

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
_MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")


class RemoteBackendError(M3Error, RuntimeError):
    """The remote LM server could not answer; the message says which server and what to check.

    status: the HTTP status the server answered with; None when it could not be reached or broke off."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OpenAIChatBackend:
    """``ChatBackend`` over ``POST {base_url}/chat/completions`` with ``stream: true``.

    base_url: the API root including ``/v1``; model: the served model name; api_key: sent as a bearer
    token when given; timeout_s: connect and between-chunk read timeout (seconds).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        takes_images: bool = True,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.info = BackendInfo(name=model, version=f"remote {self.base_url}", takes_images=takes_images, remote=True,
                                token_logprobs=True)
        self._refuses_logprobs = False  # the server answered 400 to ``logprobs`` once: not asked again

    def list_models(self) -> list[str]:
        """The model names the server offers (``GET /models``): a cheap reachability check."""
        response = self._request("GET", "/models")
        return [m["id"] for m in response.json().get("data", [])]

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[np.ndarray] | None = None,
        tools: list[dict[str, Any]] | None = None,
        config: GenerationConfig | None = None,
        cache_key: str | None = None,  # the server keeps its own prefix cache (vLLM: automatic prefix caching)
        constraints: Any = None,  # decoding constraints cannot reach a remote model (``info.remote``): the agent says so
        logprobs: TokenLogprobs | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as the server streams it. ``logprobs``: the streamed tokens' log-probabilities (the
        API's ``logprobs``); a server that refuses them (400, as ``m3 serve-lm`` does) is asked again without, once,
        and ``logprobs.available`` is set False, as it is when a streamed piece comes without them."""
        config = config or GenerationConfig()
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages, images or []),
            "stream": True,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
        }
        if config.stop:
            payload["stop"] = list(config.stop)
        if tools:
            payload["tools"] = tools
        if logprobs is not None and self._refuses_logprobs:
            logprobs.available = False
        elif logprobs is not None:
            payload["logprobs"] = True
        try:
            response = self._request("POST", "/chat/completions", json=payload, stream=True, headers={"Accept": "text/event-stream"})
        except RemoteBackendError as exc:
            if not (payload.get("logprobs") and exc.status == 400 and "logprob" in str(exc)):
                raise
            log.info("the LM server at %s gives no token log-probabilities; the answers' confidence is not available", self.base_url)
            self._refuses_logprobs, logprobs.available = True, False  # type: ignore[union-attr]
            del payload["logprobs"]
            response = self._request("POST", "/chat/completions", json=payload, stream=True, headers={"Accept": "text/event-stream"})
        calls: dict[int, dict[str, str]] = {}
        finish: dict[str, Any] = {}
        try:
            for event in _sse_events(response):
                if "error" in event:
                    raise RemoteBackendError(f"the LM server at {self.base_url} stopped with an error: {_error_text(event)}")
                for choice in event.get("choices", [])[:1]:
                    delta = choice.get("delta") or {}
                    if logprobs is not None and payload.get("logprobs") and (delta.get("content") or delta.get("tool_calls")):
                        tokens = (choice.get("logprobs") or {}).get("content") or [{"logprob": None}]  # missing: not available
                        logprobs.extend(t.get("logprob") for t in tokens)
                    if delta.get("content"):
                        yield delta["content"]
                    for call in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
                        fn = call.get("function") or {}
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
                    if choice.get("finish_reason"):
                        finish = choice
        except requests.RequestException as exc:
            raise RemoteBackendError(f"the LM server at {self.base_url} broke off the answer ({type(exc).__name__}); try again.") from None
        finally:
            response.close()
        for index in sorted(calls):
            yield _tool_call_text(calls[index])
        if finish.get("finish_reason") == "stop" and finish.get("stop_reason") in config.stop:
            # OpenAI servers cut the stop string; an in-process model keeps it ("</tool_call>" closes a call the
            # server did not parse, ")>" a VILA-M3 trigger): vLLM and m3 serve-lm name it, so the agent reads the same text
            yield finish["stop_reason"]
        elif finish.get("finish_reason") == "length":
            log.info("the LM server at %s stopped at max_tokens (%d)", self.base_url, config.max_new_tokens)

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base_url + path, timeout=(min(10.0, self.timeout_s), self.timeout_s), **kwargs)
        except requests.RequestException as exc:
            raise RemoteBackendError(
                f"the LM server at {self.base_url} is unreachable ({type(exc).__name__}); check that it runs and the URL "
                "ends with /v1."
            ) from None
        if response.status_code >= 400:
            try:
                detail = _error_text(response.json())
            except ValueError:
                detail = response.text[:200]
            hint = " (check the API key)" if response.status_code in (401, 403) else ""
            raise RemoteBackendError(f"the LM server at {self.base_url} answered {response.status_code}{hint}: {detail}",
                                     status=response.status_code)
        return response


def connect(base_url: str, model: str, *, api_key: str | None = None, **kwargs: Any) -> OpenAIChatBackend:
    """An ``OpenAIChatBackend`` for ``model`` at ``base_url`` (the API root, ending ``/v1``), checked once now.

    A server that answers and refuses the key, or does not serve ``model``, raises ``RemoteBackendError`` (a
    setting to fix); one that cannot be reached yet is only logged: the backend is returned and each question
    says so until the server is up."""
    backend = OpenAIChatBackend(base_url, model, api_key=api_key, **kwargs)
    try:
        served = backend.list_models()
    except RemoteBackendError as exc:
        if exc.status is not None:
            raise
        log.warning("%s; starting anyway: questions fail until it answers.", exc)
        return backend
    if model not in served:
        raise RemoteBackendError(f"the LM server at {backend.base_url} does not serve the model {model!r}; it serves "
                                 f"{', '.join(map(repr, served)) or 'none'}. Set the model name to one of these.", status=404)
    return backend


def to_openai_messages(messages: list[dict[str, Any]], images: list[np.ndarray]) -> list[dict[str, Any]]:
    """Agent messages (text with ``<image>`` placeholders) → OpenAI messages with ``image_url`` parts.

    The i-th placeholder across all messages takes ``images[i]``; a count mismatch is an error. An assistant
    message's ``<tool_call>`` text becomes its ``tool_calls`` (``tool_call_id``: call00001, call00002… in the order
    of the conversation) and the tool messages after it take those ids in order; a VILA-M3 trigger
    (``<VISTA3D(...)>``) stays text. Keys other than role / content / name / tool_call_id / tool_calls are dropped
    (no arrays leave).
    """
    out, used, issued = [], 0, 0
    unanswered: list[str] = []  # ids of the last assistant turn's calls that no tool message has answered yet
    for message in messages:
        clean = {k: v for k, v in message.items() if k in _MESSAGE_KEYS}
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            unanswered = [str(c.get("id")) for c in message["tool_calls"] if isinstance(c, dict)]
        elif role == "assistant":
            before, calls = _assistant_calls(str(message.get("content") or ""))
            if calls:
                unanswered = [tool_call_id(issued + i) for i in range(len(calls))]
                issued += len(calls)
                clean["content"] = before or None
                clean["tool_calls"] = [{"id": i, "type": "function", "function": f} for i, f in zip(unanswered, calls)]
        elif role == "tool":
            given = clean.get("tool_call_id")
            if given in unanswered:
                unanswered.remove(given)
            elif not given:
                if unanswered:
                    clean["tool_call_id"] = unanswered.pop(0)
                else:  # a result without a call in the history (a legacy trigger's): an id of its own
                    clean["tool_call_id"] = tool_call_id(issued)
                    issued += 1
        text = clean.get("content")
        if isinstance(text, str) and IMAGE_PLACEHOLDER in text:
            parts: list[dict[str, Any]] = []
            for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
                if i > 0:
                    if used >= len(images):
                        raise RemoteBackendError(f"the messages hold more <image> placeholders than the {len(images)} images given.")
                    parts.append({"type": "image_url", "image_url": {"url": image_data_url(images[used])}})
                    used += 1
                    chunk = chunk.removeprefix("\n")  # "<image>\n" is one unit; servers re-add the break
                if chunk:
                    parts.append({"type": "text", "text": chunk})
            clean["content"] = parts
        out.append(clean)
    if used != len(images):
        raise RemoteBackendError(f"{len(images)} images were given but the messages hold {used} <image> placeholders; they must match.")
    return out


def tool_call_id(index: int) -> str:
    """The id of a conversation's ``index``-th tool call (from 0): ``call00001``, ``call00002``, …"""
    return f"call{index + 1:05d}"


def image_data_url(image: np.ndarray) -> str:
    """A lossless PNG ``data:`` URL of an ``(H, W)`` or ``(H, W, 3)`` uint8 picture."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise RemoteBackendError(f"images must be (H, W) or (H, W, 3) uint8 arrays, got {array.dtype} {array.shape}.")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """JSON payloads of a server-sent-event stream's ``data:`` lines until ``[DONE]`` (hand-written:
    the SSE framing is four lines of code and no SSE client library is a dependency)."""
    for line in response.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _assistant_calls(text: str) -> tuple[str, list[dict[str, str]]]:
    """(text before the first call, OpenAI ``function`` objects) of an assistant turn's ``<tool_call>`` calls; a call
    the agent could not read goes out under the name it read (or "unknown") with no arguments, beside its tool error."""
    from vlm.tools import parse_tool_calls

    if TOOL_CALL_OPEN not in text:
        return text, []
    _, calls = parse_tool_calls(text)
    calls = [c for c in calls if c.raw.lstrip().startswith(TOOL_CALL_OPEN)]
    before = text[: text.find(TOOL_CALL_OPEN)]
    return before, [{"name": c.name or "unknown", "arguments": json.dumps(c.arguments, ensure_ascii=False)} for c in calls]


def _tool_call_text(call: dict[str, str]) -> str:
    """A server's tool call as the agent's canonical text (``format_tool_call``: what an in-process model writes)."""
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError:
        arguments = call["arguments"]  # the agent's parser reports the malformed call to the model
    if isinstance(arguments, dict):
        return format_tool_call(call["name"], arguments)
    return TOOL_CALL_OPEN + json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False) + TOOL_CALL_CLOSE


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return str(body)
