"""A real OpenID Connect provider for the sign-in tests: the ``oidc-provider-mock`` package (Authlib's server parts in a
Flask app) served on a free localhost port, with every request it receives recorded (to check PKCE on the wire)."""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import parse_qs

import werkzeug.serving
from oidc_provider_mock import User, app

__all__ = ["Provider", "run_provider", "User", "sign_in_at_provider"]


@dataclass
class Provider:
    """The running provider: its ``issuer`` URL and the ``requests`` it answered, as ``(method, path, params)``."""

    issuer: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def params(self, path: str) -> list[dict[str, str]]:
        """The parameters (query and form) of each request to ``path``, oldest first."""
        return [p for _, got, p in self.requests if got == path]


@contextlib.contextmanager
def run_provider(users: list[User]) -> Iterator[Provider]:
    """The provider at ``http://localhost:PORT`` with ``users`` (``sub`` → claims put into their ID tokens), nonces
    required; stopped on exit. Any client id and secret are accepted (no registration)."""
    wsgi = app(require_nonce=True, user_claims=users)
    server = werkzeug.serving.make_server("localhost", 0, _recorded(wsgi, recorded := []), threaded=True,
                                          request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Provider(f"http://localhost:{server.server_port}", recorded)
    finally:
        server.shutdown()
        server.server_close()


def sign_in_at_provider(browser, page, sub: str):
    """Press the provider's "Authorize" on its sign-in ``page`` (an ``httpx.Response``) as user ``sub``; returns the
    response after following the redirects back to the app."""
    assert "Authorize" in page.text, page.text[:300]
    return browser.post(str(page.url), data={"sub": sub}, follow_redirects=True)


class _Quiet(werkzeug.serving.WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # request lines carry tokens (id_token_hint): not on the test log
        pass


def _recorded(wsgi, recorded: list):
    def application(environ, start_response):
        params = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)  # handed on unread
            params.update({k: v[-1] for k, v in parse_qs(body.decode("latin-1")).items()})
        recorded.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), params))
        return wsgi(environ, start_response)

    return application
