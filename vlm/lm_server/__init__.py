"""The OpenAI-compatible chat server behind ``m3 serve-lm``: any ``ChatBackend`` served as vLLM serves a model.

    from vlm.lm_server import create_app
    app = create_app(backend, api_key="...", max_concurrency=2, max_queue=16)   # an ASGI app for uvicorn

What it speaks (checked with the ``openai`` Python client in ``tests/vlm/test_lm_server_openai.py``):

- ``tool_calls`` with ids and ``finish_reason: "tool_calls"`` when the model writes ``<tool_call>…</tool_call>`` and
  the request offered tools (``content``: the text before the call, or null); ``"length"`` when ``max_tokens`` ran out;
  ``"stop"`` otherwise, the stop string cut and named in ``stop_reason``;
- ``usage`` on every response, and a final usage chunk in a stream asked with ``stream_options.include_usage``;
- 404 for a model name it does not serve, 400 for a parameter it cannot honour (``n`` > 1, ``logprobs``, a
  ``response_format`` other than text, penalties, ``logit_bias``, a forced ``tool_choice``, any unknown key);
- at most ``max_concurrency`` requests generating and ``max_queue`` waiting; beyond that 429 with ``Retry-After``.

Modules: ``protocol`` (the request), ``completion`` (the answer), ``usage`` (token counts), ``admission`` (the queue),
``app`` (the routes). ``vlm.serve_lm`` is the command line.
"""

from vlm.lm_server.admission import DEFAULT_MAX_QUEUE, Admission
from vlm.lm_server.app import create_app
from vlm.lm_server.completion import Completion, complete
from vlm.lm_server.protocol import ChatRequest, ServeError, from_openai_messages, parse_chat_request

__all__ = ["create_app", "ServeError", "from_openai_messages", "parse_chat_request", "ChatRequest", "Completion", "complete",
           "Admission", "DEFAULT_MAX_QUEUE"]
