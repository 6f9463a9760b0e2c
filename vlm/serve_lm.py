"""``m3 serve-lm MODEL``: a checkpoint behind the OpenAI-compatible chat API (``vlm.lm_server``), streaming included.

    M3_LM_API_KEY=... m3 serve-lm /models/m3-8b --host 0.0.0.0 --port 8000 --max-concurrency 2 --max-queue 16

Loads the folder with ``vlm.backends.load_backend`` and serves it as the model named after the folder. At most
``--max-concurrency`` requests generate at once (default 1) and ``--max-queue`` more wait their turn (default 16);
a request beyond both gets HTTP 429 with ``Retry-After``. Beyond localhost a key is required ($M3_LM_API_KEY). What
the API accepts and answers: ``vlm.lm_server`` and docs/scale.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from vlm.cli import add_placement_arguments
from vlm.lm_server import DEFAULT_MAX_QUEUE, ServeError, create_app, from_openai_messages

__all__ = ["create_app", "serve_lm", "from_openai_messages", "add_parsers", "ServeError", "API_KEY_ENV"]

API_KEY_ENV = "M3_LM_API_KEY"


def serve_lm(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_concurrency: int = 1,
             max_queue: int = DEFAULT_MAX_QUEUE, device: str = "auto", dtype: str = "auto") -> None:
    """Load the checkpoint folder ``model`` (``vlm.backends.load_backend``) on ``device`` in ``dtype`` and serve it until
    stopped."""
    import uvicorn

    from vlm.backends import load_backend

    if not api_key and not _is_loopback(host):
        raise ServeError(f"serving on {host} without an API key would open the model to the network; set ${API_KEY_ENV} or bind 127.0.0.1.")
    if max_concurrency < 1 or max_queue < 0:
        raise ServeError(f"--max-concurrency must be >= 1 and --max-queue >= 0, got {max_concurrency} and {max_queue}.")
    backend = load_backend(model, device=device, dtype=dtype)
    app = create_app(backend, api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``m3 serve-lm MODEL [--host H] [--port P] [--max-concurrency N] [--max-queue N]``; the key comes from $M3_LM_API_KEY."""
    p = sub.add_parser("serve-lm", help="serve a model over the OpenAI-compatible chat API (streaming, tool calls)")
    p.add_argument("model", help="checkpoint folder (m3, VILA layout, or an image-text-to-text model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need $M3_LM_API_KEY)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-concurrency", type=int, default=1, help="requests generating at once (default 1)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests waiting beyond those generating; more get HTTP 429 (default {DEFAULT_MAX_QUEUE})")
    add_placement_arguments(p)
    p.set_defaults(func=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        serve_lm(args.model, host=args.host, port=args.port, api_key=os.environ.get(API_KEY_ENV) or None,
                 max_concurrency=args.max_concurrency, max_queue=args.max_queue, device=args.device, dtype=args.dtype)
    except ServeError as exc:
        print(f"m3 serve-lm: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
