"""The HTTP access log, without PHI: one line per request on the ``m3.access`` logger (the server's log).

``client user METHOD route status duration_ms``: the client address (after the forwarded-header handling), the
signed-in user (``-`` when none), the path without its query string, and with a served file's path replaced by
``[file]`` (Gradio serves uploads and pictures at ``/gradio_api/file=PATH``, and an uploaded file's name may carry a
patient's name). uvicorn's own access log stays off: it prints full paths.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

__all__ = ["access_logged", "USER_KEY", "loggable_path", "StatusWatch"]

log = logging.getLogger("m3.access")
USER_KEY = "m3.user"  # scope key the route guard sets to the signed-in user's name
_FILE_ROUTE = "/gradio_api/file="


class StatusWatch:
    """An ASGI ``send`` that passes messages on and remembers the response's status code (0 before it starts)."""

    def __init__(self, send: Callable) -> None:
        self.send, self.status = send, 0

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


def access_logged(app: Any) -> Any:
    """``app`` with each HTTP request written to the ``m3.access`` logger once it is answered."""

    async def logged(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        watch, started = StatusWatch(send), time.perf_counter()
        try:
            await app(scope, receive, watch)
        finally:
            client = (scope.get("client") or ("-",))[0]
            log.info("%s %s %s %s %d %.0f", client, scope.get(USER_KEY) or "-", scope.get("method", "-"),
                     loggable_path(scope.get("path", "")), watch.status, (time.perf_counter() - started) * 1000)

    return logged


def loggable_path(path: str) -> str:
    """``path`` as the access log writes it: a served file's path replaced by ``[file]``."""
    head, sep, _ = path.partition(_FILE_ROUTE)
    return f"{head}{_FILE_ROUTE}[file]" if sep else path
