"""OpenID Connect single sign-on: m3 as a confidential client of the hospital's identity provider.

Authlib's Starlette integration runs the authorization-code flow with PKCE (S256) and checks ``state`` and the ID
token's signature (the provider's published keys), issuer, expiry and ``nonce``; its audience check is asked for here
(``aud`` must hold ``auth.oidc_client_id``). What is m3's own: the user name from ``auth.oidc_username_claim`` (1-64
letters, digits, ``. _ @ -``); only members of ``auth.oidc_allowed_groups`` (from ``auth.oidc_groups_claim``, a dotted
name reaching into a nested claim) when that is set; a server-side session per sign-in, its id in a signed cookie,
signed out after ``auth.idle_logout_min`` idle by ``app.route_guard`` as password sessions are; sign-out here and at
the provider; ``login`` / ``login_failed`` / ``logout`` audit events with ``method="oidc"``.

Routes, under ``server.root_path``: ``/oidc/login`` (to the provider), ``/oidc/callback`` (back from it: register
``https://HOST[ROOT_PATH]/oidc/callback`` at the provider), ``/oidc/signed-out`` and ``/logout``.
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.starlette_client import OAuth
from joserfc.errors import JoseError
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.auth import valid_username
from app.config import AuthConfig

__all__ = ["OidcLogin", "OidcSessions", "LOGIN_PATH", "CALLBACK_PATH", "SIGNED_OUT_PATH", "LOGOUT_PATH",
           "DISCOVERY_SUFFIX"]

log = logging.getLogger(__name__)
_HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError,)
try:  # Authlib's client is httpx2 where that is installed, else httpx: a provider that is down raises either's errors
    import httpx2

    _HTTP_ERRORS += (httpx2.HTTPError,)
except ImportError:
    pass
_UNREACHABLE = (*_HTTP_ERRORS, ValueError)  # ValueError: a discovery document that is no JSON
LOGIN_PATH = "/oidc/login"
CALLBACK_PATH = "/oidc/callback"
SIGNED_OUT_PATH = "/oidc/signed-out"
LOGOUT_PATH = "/logout"
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
SESSION_KEY = "m3_oidc_sid"  # the key in the signed session cookie that names the server-side session
MAX_SESSIONS = 10_000  # sign-ins kept at once; beyond, the oldest is dropped (browsers closed without signing out)
_PROVIDER = "hospital"  # Authlib's registry name for the one provider


@dataclass(frozen=True)
class OidcSession:
    """One sign-in: the user name and the ID token (sent back to the provider as ``id_token_hint`` at sign-out)."""

    user: str
    id_token: str = ""
    signed_in_s: float = 0.0  # time.time() of the sign-in


class OidcSessions:
    """Signed-in sessions by random id, kept in memory (a restart signs everyone out, as for passwords); thread-safe."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, OidcSession] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, user: str, id_token: str) -> str:
        """A new session id for ``user`` (a fresh id at every sign-in: a cookie set before it is worth nothing)."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = OidcSession(user, id_token, time.time())
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def get(self, sid: str | None) -> OidcSession | None:
        with self._lock:
            return self._sessions.get(sid) if sid else None

    def end(self, sid: str | None) -> OidcSession | None:
        """Forget session ``sid``; returns it, or ``None`` when there was none."""
        with self._lock:
            return self._sessions.pop(sid, None) if sid else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


class OidcLogin:
    """Sign-in through the provider at ``auth.oidc_issuer``.

    An instance is Gradio's ``auth_dependency`` (``(request) -> user name or None``); ``add_routes(api)`` adds the
    sign-in, callback, signed-out and sign-out routes under ``prefix`` (``server.root_path``). ``session_key`` and
    ``end_session`` let ``app.route_guard`` sign an idle session out. ``audit`` is an ``app.audit.AuditLog``.
    Needs Starlette's ``SessionMiddleware`` outside the route guard (``app.server`` adds it) for the cookie.
    """

    def __init__(self, auth: AuthConfig, *, prefix: str = "", audit: Any = None, sessions: OidcSessions | None = None):
        self.auth = auth
        self.prefix = prefix.rstrip("/")
        self.audit = audit
        self.sessions = sessions if sessions is not None else OidcSessions()
        self.issuer = auth.oidc_issuer.rstrip("/")
        self.client = OAuth().register(
            _PROVIDER, client_id=auth.oidc_client_id, client_secret=auth.oidc_client_secret,
            server_metadata_url=self.issuer + DISCOVERY_SUFFIX,
            client_kwargs={"scope": " ".join(auth.oidc_scopes), "code_challenge_method": "S256"},
        )
        authlib_log = logging.getLogger("authlib")  # its debug lines print PKCE code verifiers: never below INFO
        authlib_log.setLevel(max(logging.INFO, authlib_log.level))

    # -- what the route guard and Gradio call --------------------------------------------------------------------
    @property
    def open_paths(self) -> tuple[str, ...]:
        """The routes that answer without a session (the sign-in itself)."""
        return tuple(self.prefix + p for p in (LOGIN_PATH, CALLBACK_PATH, SIGNED_OUT_PATH))

    @property
    def sign_in_url(self) -> str:
        """Where the page sends a browser without a session."""
        return self.prefix + LOGIN_PATH

    def __call__(self, connection: HTTPConnection) -> str | None:
        session = self.sessions.get(_cookie_session(connection).get(SESSION_KEY))
        return session.user if session is not None else None

    def session_key(self, connection: HTTPConnection) -> str:
        """The key the route guard's idle clock tracks this browser's session by."""
        return f"oidc:{_cookie_session(connection).get(SESSION_KEY, '')}"

    def end_session(self, connection: HTTPConnection) -> None:
        """Sign this browser's session out (idle): forgotten here; its cookie no longer names a session."""
        cookie = _cookie_session(connection)
        self.sessions.end(cookie.pop(SESSION_KEY, None))

    # -- routes ---------------------------------------------------------------------------------------------------
    def add_routes(self, api: Any) -> None:
        """Add the sign-in routes to ``api`` (a FastAPI app; call before the page is mounted, which would answer them)."""
        for path, endpoint in ((LOGIN_PATH, self.login), (CALLBACK_PATH, self.callback),
                               (SIGNED_OUT_PATH, self.signed_out), (LOGOUT_PATH, self.logout)):
            api.add_route(self.prefix + path, endpoint, methods=["GET"], include_in_schema=False)

    async def login(self, request: Request) -> Response:
        """Send the browser to the provider's sign-in page (a fresh state, nonce and PKCE verifier)."""
        try:
            metadata = await self.client.load_server_metadata()
        except _UNREACHABLE as exc:
            log.error("the sign-in service at auth.oidc_issuer cannot be reached: %s", type(exc).__name__)
            return _page("Sign-in is not available", "The hospital's sign-in service cannot be reached. Try again in a "
                         "minute; if it persists, tell the administrator (auth.oidc_issuer).", status=502)
        if str(metadata.get("issuer", "")).rstrip("/") != self.issuer:
            log.error("the provider's discovery document names issuer %r, expected auth.oidc_issuer %r",
                      metadata.get("issuer"), self.issuer)
            return _page("Sign-in is not available", "The sign-in service describes itself as another issuer than "
                         "configured; tell the administrator (auth.oidc_issuer).", status=502)
        return await self.client.authorize_redirect(request, self._url(request, CALLBACK_PATH))

    async def callback(self, request: Request) -> Response:
        """The provider's answer: exchange the code, verify the ID token, check the user, start the session."""
        client = request.client.host if request.client else ""
        try:
            metadata = await self.client.load_server_metadata()
            # Authlib checks the audience only through azp; OIDC Core 3.1.3.7 requires aud to hold our client id
            options = {"iss": {"essential": True, "values": [metadata.get("issuer")]},
                       "aud": {"essential": True, "values": [self.auth.oidc_client_id]}}
            token = await self.client.authorize_access_token(request, claims_options=options)
        except (AuthlibBaseError, JoseError) as exc:  # state, provider error, token refused (aud, iss, exp, nonce, sig)
            return self._refused(client, "", f"{type(exc).__name__}: {exc}"[:200],
                                 "The sign-in could not be verified (it may have expired or been started in another "
                                 "window).")
        except _UNREACHABLE as exc:
            return self._refused(client, "", f"provider unreachable: {type(exc).__name__}",
                                 "The hospital's sign-in service cannot be reached.", status=502)
        claims = token.get("userinfo")
        if not claims:
            return self._refused(client, "", "no ID token", "The sign-in service sent no ID token.")
        user = _claim(claims, self.auth.oidc_username_claim)
        if not isinstance(user, str) or not valid_username(user):
            return self._refused(client, "", f"claim {self.auth.oidc_username_claim} missing or not a user name",
                                 "Your account has no user name m3 can use; tell the administrator "
                                 "(auth.oidc_username_claim).")
        if self.auth.oidc_allowed_groups and not _member(_claim(claims, self.auth.oidc_groups_claim),
                                                         self.auth.oidc_allowed_groups):
            return self._refused(client, user, "not in auth.oidc_allowed_groups",
                                 "Your account is not in a group allowed to use m3; ask the administrator for access.",
                                 status=403)
        request.session.clear()  # the pending sign-in's state is spent; a new id for the new session
        request.session[SESSION_KEY] = self.sessions.start(user, str(token.get("id_token", "")))
        if self.audit is not None:
            self.audit.event("login", user=user, method="oidc", client=client)
        return RedirectResponse(self._url(request, "/"), status_code=302)

    async def logout(self, request: Request) -> Response:
        """End the session here, then at the provider (its ``end_session_endpoint``, when it has one), which sends
        the browser back to ``/oidc/signed-out``. The route guard has written the ``logout`` audit event."""
        ended = self.sessions.end(request.session.pop(SESSION_KEY, None))
        request.session.clear()
        target = self._url(request, SIGNED_OUT_PATH)
        try:
            metadata = await self.client.load_server_metadata()
        except _UNREACHABLE:
            metadata = {}
        if ended is None or not metadata.get("end_session_endpoint"):
            return RedirectResponse(target, status_code=302)
        logout = await self.client.create_logout_url(post_logout_redirect_uri=target, id_token_hint=ended.id_token,
                                                     client_id=self.auth.oidc_client_id)
        return RedirectResponse(logout["url"], status_code=302)

    async def signed_out(self, request: Request) -> Response:
        return _page("Signed out", f"You are signed out of m3. <a href=\"{html.escape(self.prefix + LOGIN_PATH)}\">"
                     "Sign in again</a>.", raw=True)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _url(self, request: Request, path: str) -> str:
        """``path`` under the prefix as the browser reaches it: scheme after the trusted proxy's X-Forwarded-Proto
        (``app.route_guard.behind_proxies``), host from the Host header the proxy passes on."""
        return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}{self.prefix}{path}"

    def _refused(self, client: str, user: str, reason: str, message: str, status: int = 401) -> Response:
        log.warning("single sign-on refused from %s: %s", client or "-", reason)
        if self.audit is not None:
            self.audit.event("login_failed", user=user or "[unknown]", method="oidc", client=client, reason=reason)
        return _page("Sign-in failed", f"{html.escape(message)} <a href=\"{html.escape(self.prefix + LOGIN_PATH)}\">"
                     "Try again</a>.", status=status, raw=True)


def _cookie_session(connection: HTTPConnection) -> dict:
    """The signed cookie's session dict, or an empty one when no ``SessionMiddleware`` runs (never signed in)."""
    return connection.scope["session"] if "session" in connection.scope else {}


def _claim(claims: dict, name: str) -> Any:
    """The claim ``name`` of the ID token; a dotted name reaches into objects (Keycloak's ``realm_access.roles``)."""
    value: Any = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _member(groups: Any, allowed: tuple[str, ...]) -> bool:
    """True when ``groups`` (a claim: a list of names, or one name) names one of ``allowed``."""
    names = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
    return any(isinstance(g, str) and g in allowed for g in names)


def _page(title: str, body: str, *, status: int = 200, raw: bool = False) -> HTMLResponse:
    """A minimal page for the sign-in steps (``raw``: ``body`` is already HTML)."""
    text = body if raw else html.escape(body)
    return HTMLResponse(f"<!doctype html><title>m3 — {html.escape(title)}</title><h1>{html.escape(title)}</h1>"
                        f"<p>{text}</p>", status_code=status)
