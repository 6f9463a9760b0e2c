"""``m3 serve-lm MODEL``: any ``ChatBackend`` behind the OpenAI-compatible chat API, streaming included.

    m3 serve-lm /models/m3-8b --host 0.0.0.0 --port 8000      # needs $M3_LM_API_KEY beyond localhost

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream: true`` → server-sent events of
``chat.completion.chunk`` objects ending with ``data: [DONE]``), ``GET /health``. Images arrive as
``image_url`` parts with ``data:`` URLs (remote URLs are refused: the server makes no outbound
requests) and reach the backend as arrays in placeholder order. One model generates for at most
``max_concurrency`` requests at a time; the others wait. Served by FastAPI + uvicorn (Gradio's own).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (Request) at definition time.
import argparse
import base64
import io
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np

from data.errors import M3Error
from vlm.backends.base import ChatBackend, GenerationConfig

__all__ = ["create_app", "serve_lm", "from_openai_messages", "add_parsers", "ServeError", "API_KEY_ENV"]

API_KEY_ENV = "M3_LM_API_KEY"
IMAGE_PLACEHOLDER = "<image>"


class ServeError(M3Error, ValueError):
    """A request or a server setting that cannot be served; the message says what to change."""


def from_openai_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """OpenAI messages → agent messages (text with ``<image>`` placeholders) and the decoded images."""
    out, images = [], []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ServeError("each message must be an object with a role.")
        content = message.get("content")
        if isinstance(content, list):
            text = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    text.append(part.get("text", ""))
                elif kind == "image_url":
                    url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part.get("image_url", "")
                    images.append(_decode_data_url(str(url)))
                    text.append(IMAGE_PLACEHOLDER + "\n")
                else:
                    raise ServeError(f"content part type {kind!r} is not supported; use text or image_url.")
            content = "".join(text)
        clean = {k: v for k, v in message.items() if k in ("role", "name", "tool_call_id", "tool_calls")}
        clean["content"] = content or ""
        out.append(clean)
    return out, images


def create_app(backend: ChatBackend, *, model_name: str | None = None, api_key: str | None = None, max_concurrency: int = 1) -> Any:
    """The FastAPI app serving ``backend`` (tests run it with uvicorn on a free loopback port)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, StreamingResponse

    name = model_name or backend.info.name
    slots = threading.Semaphore(max_concurrency)
    api = FastAPI(title="m3 LM server", docs_url=None, redoc_url=None, openapi_url=None)

    def refused(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'.", "authentication_error")
        return None

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    def models(request: Request) -> Any:
        return refused(request) or {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "m3"}]}

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        try:
            body = await request.json()
            messages, images = from_openai_messages(body.get("messages") or [])
            if not messages:
                raise ServeError("messages must not be empty.")
            config = _generation_config(body)
        except (ServeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return _error(400, f"invalid request: {exc}", "invalid_request_error")
        tools = body.get("tools") or None
        pieces = _generate(backend, slots, messages, images, tools, config)
        completion_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if body.get("stream"):
            return StreamingResponse(_sse(pieces, completion_id, created, name), media_type="text/event-stream")
        try:
            text = await run_in_threadpool("".join, pieces)
        except Exception as exc:  # any backend failure becomes an OpenAI-shaped 500, never a traceback page
            return _error(500, f"the model failed: {type(exc).__name__}: {exc}", "server_error")
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return api


def serve_lm(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_concurrency: int = 1) -> None:
    """Load the checkpoint folder ``model`` (``vlm.backends.load_backend``) and serve it until stopped."""
    import uvicorn

    from vlm.backends import load_backend

    if not api_key and not _is_loopback(host):
        raise ServeError(f"serving on {host} without an API key would open the model to the network; set ${API_KEY_ENV} or bind 127.0.0.1.")
    backend = load_backend(model)
    uvicorn.run(create_app(backend, api_key=api_key, max_concurrency=max_concurrency), host=host, port=port, log_level="warning")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``m3 serve-lm MODEL [--host H] [--port P] [--max-concurrency N]``; the key comes from $M3_LM_API_KEY."""
    p = sub.add_parser("serve-lm", help="serve a model over the OpenAI-compatible chat API (streaming)")
    p.add_argument("model", help="checkpoint folder (m3, VILA layout, or an image-text-to-text model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need $M3_LM_API_KEY)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-concurrency", type=int, default=1, help="requests generating at once (default 1)")
    p.set_defaults(func=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        serve_lm(args.model, host=args.host, port=args.port, api_key=os.environ.get(API_KEY_ENV) or None,
                 max_concurrency=args.max_concurrency)
    except ServeError as exc:
        print(f"m3 serve-lm: error: {exc}", file=sys.stderr)
        return 2
    return 0


# --- private helpers ---------------------------------------------------------------------------


def _generate(backend, slots, messages, images, tools, config) -> Iterator[str]:
    with slots:  # one generation per slot; the rest wait their turn
        yield from backend.stream_chat(messages, images=images, tools=tools, config=config)


def _sse(pieces: Iterator[str], completion_id: str, created: int, name: str) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant"})
    try:
        for piece in pieces:
            if piece:
                yield chunk({"content": piece})
    except Exception as exc:  # headers are sent: report the failure in-band, as vLLM does
        yield f"data: {json.dumps({'error': {'message': f'the model failed: {type(exc).__name__}: {exc}', 'type': 'server_error'}})}\n\n"
    else:
        yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


def _generation_config(body: dict[str, Any]) -> GenerationConfig:
    stop = body.get("stop") or []
    return GenerationConfig(
        max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 256),
        temperature=float(body.get("temperature") if body.get("temperature") is not None else 0.0),
        top_p=float(body.get("top_p") if body.get("top_p") is not None else 1.0),
        stop=[stop] if isinstance(stop, str) else list(stop),
    )


def _decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    if not url.startswith("data:image/"):
        raise ServeError("images must be sent inline as data:image/...;base64 URLs; this server fetches no remote URLs.")
    try:
        header, payload = url.split(",", 1)
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (ValueError, OSError) as exc:
        raise ServeError(f"an image_url could not be decoded ({type(exc).__name__}).") from None
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _error(status: int, message: str, kind: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
