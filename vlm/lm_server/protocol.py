"""What ``m3 serve-lm`` accepts: the OpenAI chat-completions request, validated, and its messages in the agent's form.

``parse_chat_request(body, served_model)`` checks a request body against the API (pydantic, unknown parameters
refused) and against what this server can honour, and returns a ``ChatRequest``; ``from_openai_messages`` turns
OpenAI messages into the agent's (``<image>`` placeholders plus the decoded pictures; an assistant's ``tool_calls``
back into the ``<tool_call>`` text the models were trained on). Every refusal is a ``ServeError`` carrying the HTTP
status it answers with: 404 for a model this server does not serve, 400 for the rest.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data.errors import M3Error
from data.tool_text import format_tool_call
from vlm.backends.base import GenerationConfig

__all__ = ["ServeError", "ChatRequest", "parse_chat_request", "from_openai_messages", "DEFAULT_MAX_TOKENS", "IMAGE_PLACEHOLDER"]

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_MAX_TOKENS = 256  # when a request names neither max_tokens nor max_completion_tokens (the app's default)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ServeError(M3Error, ValueError):
    """A request or a server setting that cannot be served; the message says what to change.

    status: the HTTP status a request refused with it gets; kind / code / param: the OpenAI error object's fields."""

    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code or self.status}}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")  # json_schema carries its schema; refused below in any case
    type: str


class _Body(BaseModel):
    """The chat-completions parameters this server knows; any other key is refused (as OpenAI's API does)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    n: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    response_format: _ResponseFormat | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None  # an end-user id for abuse tracking: accepted, not used


@dataclass(frozen=True)
class ChatRequest:
    """A request this server can answer: the agent-form ``messages`` and their ``images`` (placeholder order),
    ``tools`` offered to the model (None when none or ``tool_choice: "none"``), how to sample (``config``), and the
    response's form."""

    messages: list[dict[str, Any]]
    images: list[np.ndarray]
    tools: list[dict[str, Any]] | None
    config: GenerationConfig
    stream: bool
    include_usage: bool
    parallel_tool_calls: bool


def parse_chat_request(body: Any, served_model: str) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body for the model named ``served_model``; raises ``ServeError``."""
    if not isinstance(body, dict):
        raise ServeError("the request body must be a JSON object with model and messages.")
    try:
        req = _Body.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if req.model != served_model:
        raise ServeError(f"The model `{req.model}` does not exist; this server serves `{served_model}` (GET /v1/models).",
                         status=404, code="model_not_found", param="model")
    _refuse_unsupported(req)
    messages, images = from_openai_messages(req.messages)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    config = GenerationConfig(
        max_new_tokens=req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=req.temperature if req.temperature is not None else 0.0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=[s for s in stop if s],
    )
    tools = (req.tools or None) if req.tool_choice != "none" else None
    return ChatRequest(messages, images, tools, config, req.stream,
                       bool(req.stream_options and req.stream_options.include_usage), req.parallel_tool_calls is not False)


def from_openai_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """OpenAI messages → agent messages (text with ``<image>`` placeholders) and the decoded images.

    An assistant message's ``tool_calls`` become ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` text after
    its content, as the agent keeps them and the models were trained on; ``tool_call_id`` is dropped (the order of the
    tool messages pairs them with the calls). ``developer`` messages are system messages."""
    out, images = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ServeError(f"messages[{i}] must be an object with role system, developer, user, assistant or tool, "
                             f"got {str(message)[:80]!r}.", param=f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(_content_part(part, images, f"messages[{i}]") for part in content)
        elif content is not None and not isinstance(content, str):
            raise ServeError(f"messages[{i}].content must be a string or a list of content parts.", param=f"messages[{i}].content")
        content = content or ""
        if message["role"] == "assistant" and message.get("tool_calls"):
            content += "".join(_call_text(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(message["tool_calls"]))
        clean = {"role": _ROLES[message["role"]], "content": content}
        if isinstance(message.get("name"), str):
            clean["name"] = message["name"]
        out.append(clean)
    return out, images


# --- private helpers ---------------------------------------------------------------------------


def _refuse_unsupported(req: _Body) -> None:
    """Valid API parameters this server cannot honour: refused with a 400 naming the parameter, never ignored."""
    refusals = [
        (req.n not in (None, 1), "n", f"n must be 1 (one choice per request), got {req.n}."),
        (bool(req.logprobs) or req.top_logprobs is not None, "logprobs", "logprobs and top_logprobs are not supported by m3 serve-lm."),
        (req.response_format is not None and req.response_format.type != "text", "response_format",
         f"response_format must be text; {req.response_format.type if req.response_format else ''!r} (structured output) is not "
         "supported by m3 serve-lm."),
        (bool(req.presence_penalty) or bool(req.frequency_penalty), "presence_penalty",
         "presence_penalty and frequency_penalty are not supported by m3 serve-lm; leave them 0."),
        (bool(req.logit_bias), "logit_bias", "logit_bias is not supported by m3 serve-lm."),
        (req.seed is not None and (req.temperature or 0) > 0, "seed",
         "seed is not supported with sampling (temperature > 0); greedy decoding (temperature 0) is deterministic."),
        (req.tool_choice not in (None, "auto", "none"), "tool_choice",
         f"tool_choice must be auto or none, got {req.tool_choice!r}; a required or named call cannot be forced here."),
        (req.stream_options is not None and not req.stream, "stream_options", "stream_options is only allowed when stream is true."),
    ]
    for refused, param, message in refusals:
        if refused:
            raise ServeError(message, param=param, code="unsupported_parameter")


def _validation_error(exc: ValidationError) -> ServeError:
    errors = exc.errors()
    unknown = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return ServeError(f"unsupported parameter(s): {', '.join(unknown)}; m3 serve-lm accepts the OpenAI chat-completions "
                          "parameters it can honour (docs/scale.md).", param=unknown[0], code="unsupported_parameter")
    first = errors[0]
    where = ".".join(map(str, first["loc"])) or "body"
    return ServeError(f"{where}: {first['msg']}.", param=where)


def _content_part(part: Any, images: list[np.ndarray], where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return str(part.get("text", ""))
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url", "") if isinstance(image_url, dict) else image_url or ""
        images.append(_decode_data_url(str(url)))
        return IMAGE_PLACEHOLDER + "\n"
    raise ServeError(f"{where}: content part type {kind!r} is not supported; use text or image_url.", param=where)


def _call_text(call: Any, where: str) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ServeError(f"{where} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}.", param=where)
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        raise ServeError(f"{where}.function.arguments must be a JSON object string, got {str(arguments)[:80]!r}.", param=where) from None
    if not isinstance(parsed, dict):
        raise ServeError(f"{where}.function.arguments must encode a JSON object, got {type(parsed).__name__}.", param=where)
    return format_tool_call(function["name"], parsed)


def _decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    if not url.startswith("data:image/"):
        raise ServeError("images must be sent inline as data:image/...;base64 URLs; this server fetches no remote URLs.")
    try:
        _, payload = url.split(",", 1)
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (ValueError, OSError) as exc:
        raise ServeError(f"an image_url could not be decoded ({type(exc).__name__}).") from None
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)

