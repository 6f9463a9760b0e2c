"""The HTTP side of ``m3 serve-lm``: a FastAPI app that serves one ``ChatBackend`` over the OpenAI chat API.

Routes: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{model}``, ``POST /v1/chat/completions`` (JSON, or
``"stream": true`` → server-sent ``chat.completion.chunk`` events ending ``data: [DONE]``). The request is checked by
``vlm.lm_server.protocol`` (404 unknown model, 400 what cannot be honoured), admitted by ``vlm.lm_server.admission``
(429 when the queue is full), generated in a worker thread, and answered by ``vlm.lm_server.completion`` (content,
``tool_calls``, finish reason) with ``usage`` from ``vlm.lm_server.usage``. Errors are OpenAI error objects.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (Request) at definition time.
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from vlm.backends.base import ChatBackend
from vlm.lm_server.admission import DEFAULT_MAX_QUEUE, Admission
from vlm.lm_server.completion import Completion, StreamedContent, complete
from vlm.lm_server.protocol import ChatRequest, ServeError, parse_chat_request
from vlm.lm_server.usage import prompt_tokens, text_tokens, usage

__all__ = ["create_app"]


def create_app(backend: ChatBackend, *, model_name: str | None = None, api_key: str | None = None, max_concurrency: int = 1,
               max_queue: int = DEFAULT_MAX_QUEUE) -> Any:
    """The FastAPI app serving ``backend`` as the model ``model_name`` (default ``backend.info.name``): at most
    ``max_concurrency`` requests generate at once and ``max_queue`` more wait; requests need ``Authorization: Bearer
    api_key`` when a key is given."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    name = model_name or backend.info.name
    admission = Admission(max_concurrency, max_queue)
    api = FastAPI(title="m3 LM server", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.admission = admission

    def error(exc: ServeError) -> JSONResponse:
        headers = {"Retry-After": "2"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    def refused(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return error(ServeError("missing or wrong API key: send 'Authorization: Bearer <key>'.", status=401,
                                    kind="authentication_error", code="invalid_api_key"))
        return None

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "m3"}

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "requests": admission.admitted, "limit": admission.limit}

    @api.get("/v1/models")
    def models(request: Request) -> Any:
        return refused(request) or {"object": "list", "data": [model_card()]}

    @api.get("/v1/models/{model_id:path}")
    def model(model_id: str, request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        if model_id != name:
            return error(ServeError(f"The model `{model_id}` does not exist; this server serves `{name}`.", status=404,
                                    code="model_not_found", param="model"))
        return model_card()

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return error(ServeError("the request body must be JSON (Content-Type: application/json)."))
        try:
            req = await run_in_threadpool(parse_chat_request, body, name)  # decodes the pictures: off the event loop
            place = admission.admit()
        except ServeError as exc:
            return error(exc)
        completion_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": completion_id, "created": created, "model": name}
        if req.stream:
            return StreamingResponse(_stream(backend, req, place, head), media_type="text/event-stream")
        async with place.turn():
            try:
                completion, n_prompt, n_completion = await run_in_threadpool(_generate, backend, req)
            except Exception as exc:  # any backend failure becomes an OpenAI-shaped 500, never a traceback page
                return error(_model_failed(exc))
        choice = {"index": 0, "message": completion.message(), "logprobs": None, "finish_reason": completion.finish_reason,
                  "stop_reason": completion.stop_reason}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(n_prompt, n_completion)}

    return api


# --- private helpers ---------------------------------------------------------------------------


def _pieces(backend: ChatBackend, req: ChatRequest) -> Iterator[str]:
    return backend.stream_chat(req.messages, images=req.images, tools=req.tools, config=req.config)


def _generate(backend: ChatBackend, req: ChatRequest) -> tuple[Completion, int, int]:
    """The whole answer (in a worker thread): the completion, prompt tokens, completion tokens."""
    n_prompt = prompt_tokens(backend, req.messages, req.images, req.tools)
    streamed = StreamedContent(req.config.stop, req.tools is not None)
    pieces = _pieces(backend, req)
    try:
        for piece in pieces:
            streamed.feed(piece)
            if streamed.stopped:
                break
    finally:
        _close(pieces)
    completion, n_completion = _finish(backend, req, streamed.text)
    return completion, n_prompt, n_completion


def _finish(backend: ChatBackend, req: ChatRequest, text: str) -> tuple[Completion, int]:
    """The completion of the generated ``text`` and its token count (``length`` when it used all of max_tokens)."""
    n_completion = text_tokens(backend, text)
    completion = complete(text, stop=req.config.stop, tools_offered=req.tools is not None,
                          parallel_tool_calls=req.parallel_tool_calls, length_reached=n_completion >= req.config.max_new_tokens)
    return completion, n_completion


async def _stream(backend: ChatBackend, req: ChatRequest, place: Any, head: dict[str, Any]) -> AsyncIterator[str]:
    """The server-sent events of one streamed completion (content as it is safe to send, then the tool calls, the
    finish reason and, when asked, the usage)."""
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    def event(delta: dict[str, Any] | None, finish: Completion | None = None, use: dict[str, int] | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish.finish_reason if finish else None}]
        if finish is not None:
            choices[0]["stop_reason"] = finish.stop_reason
        body = {**head, "object": "chat.completion.chunk", "choices": choices}
        if req.include_usage:
            body["usage"] = use
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async with place.turn():
        yield event({"role": "assistant", "content": ""})
        streamed = StreamedContent(req.config.stop, req.tools is not None)
        try:
            n_prompt = await run_in_threadpool(prompt_tokens, backend, req.messages, req.images, req.tools)
            pieces = _pieces(backend, req)
            try:
                async for piece in iterate_in_threadpool(pieces):
                    if text := streamed.feed(piece):
                        yield event({"content": text})
                    if streamed.stopped:
                        break
            finally:
                await run_in_threadpool(_close, pieces)
            completion, n_completion = await run_in_threadpool(_finish, backend, req, streamed.text)
        except Exception as exc:  # headers are sent: report the failure in-band, as vLLM does
            yield f"data: {json.dumps(_model_failed(exc).body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        if rest := streamed.finish(completion):
            yield event({"content": rest})
        for index, call in enumerate(completion.tool_calls):
            yield event({"tool_calls": [{"index": index, **call}]})
        yield event({}, completion)
        if req.include_usage:
            yield event(None, use=usage(n_prompt, n_completion))
        yield "data: [DONE]\n\n"


def _close(pieces: Iterator[str]) -> None:
    """End a backend's generator early (at a stop string): its generation thread winds down."""
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


def _model_failed(exc: Exception) -> ServeError:
    return ServeError(f"the model failed: {type(exc).__name__}: {exc}", status=500, kind="server_error")
