"""The gate in front of the app: which routes answer without a session, sign-ins rate-limited per client address
(``app.login_limits``), sessions signed out after ``auth.idle_logout_min`` idle, sign-ins, sign-outs and report
downloads written to the audit log, and the forwarded-header handling trusting ``auth.trusted_proxies``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import time
import weakref
from typing import Any, Callable

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.websockets import WebSocketClose

from app.access_log import USER_KEY, StatusWatch
from app.auth import RAW_PEER, SIGN_IN_CLIENT, client_address
from app.config import AppConfig
from app.login_limits import LoginLimiter, client_key

__all__ = ["RouteGuard", "guard_routes", "SessionActivity", "behind_proxies", "PUBLIC_PATHS", "PUBLIC_PREFIXES"]

# Paths under the Gradio mount that answer without a session: the page (it shows the login form), the
# login itself and static assets. Everything else needs a session (RouteGuard).
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt",
                          "/manifest.json", "/pwa_icon"})
PUBLIC_PREFIXES = ("/static/", "/assets/", "/svelte/", "/pwa_icon/")
_DOWNLOAD = re.compile(r"(report|seg)[\w.-]*\.(md|pdf|dcm)")  # the report export's files (no PHI in these names)


class RouteGuard:
    """ASGI middleware in front of the app with Gradio mounted at ``mount_path``.

    Only the page (``/``), ``/login``, static assets and the paths in ``open_paths`` (``/healthz``) answer
    without a session; everything else (``/gradio_api/cancel``, ``/openapi.json``, …) gets 401. With a
    ``sign_in_url`` (single sign-on) the page itself redirects there instead of showing Gradio's login form.
    ``session_user(connection)`` names the signed-in user or returns ``None``. With a ``limiter``, each
    ``POST /login`` is admitted or refused (429 with ``Retry-After``) by its client address first.
    """

    def __init__(self, app: Any, *, session_user: Callable[[HTTPConnection], Any], mount_path: str = "/",
                 limiter: LoginLimiter | None = None, trusted_proxies: tuple[str, ...] = (),
                 open_paths: tuple[str, ...] = ("/healthz", "/livez", "/readyz"), audit: Any = None,
                 sign_in_url: str = ""):
        self.app = app
        self.sign_in_url = sign_in_url  # where the page sends a browser without a session (OIDC); "" = Gradio's form
        self.audit = audit
        self.session_user = session_user
        self._takes_refresh = "refresh" in inspect.signature(session_user).parameters  # idle logout knows activity
        self.mount = mount_path.rstrip("/")
        self.limiter = limiter
        self.trusted_proxies = trusted_proxies
        # one sign-in at a time per address: counts stay exact without counting colleagues' pending sign-ins as failures
        self._sign_in_turns: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()
        self.open_paths = open_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        if path in self.open_paths:
            return await self.app(scope, receive, send)
        page_path = (path[len(self.mount):] or "/") if path == self.mount or path.startswith(self.mount + "/") else None
        if page_path is not None and (page_path in PUBLIC_PATHS or page_path.startswith(PUBLIC_PREFIXES)):
            if page_path in ("/login", "/login/") and scope.get("method") == "POST":
                return await self._sign_in(scope, receive, send)
            if page_path == "/":  # an idle session is signed out before the page decides to show the login form
                if await self._user(scope, refresh=False) is None and self.sign_in_url and scope["type"] == "http":
                    return await RedirectResponse(self.sign_in_url, status_code=302)(scope, receive, send)
            return await self.app(scope, receive, send)
        user = await self._user(scope, refresh="/heartbeat/" not in path)  # the page's heartbeat is no activity
        if user is not None:
            scope[USER_KEY] = str(user)  # for the access log (app.access_log)
            if self.audit is not None and scope["type"] == "http":
                return await self._audited(scope, receive, send, page_path or path, str(user))
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008)(scope, receive, send)
        return await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)

    async def _user(self, scope: dict, *, refresh: bool) -> Any:
        connection = HTTPConnection(scope)
        user = self.session_user(connection, refresh=refresh) if self._takes_refresh else self.session_user(connection)
        return await user if inspect.isawaitable(user) else user

    async def _audited(self, scope: dict, receive: Callable, send: Callable, path: str, user: str) -> None:
        """Pass the request on; a sign-out, and a download of one of the report's files that was answered 200, are
        written to the audit log with the signed-in ``user``."""
        name = path.rsplit("/", 1)[-1] if path.startswith("/gradio_api/file=") else ""
        if path in ("/logout", "/logout/"):
            self.audit.event("logout", user=user, reason="signed out")
        if not _DOWNLOAD.fullmatch(name):
            return await self.app(scope, receive, send)
        watch = StatusWatch(send)

        await self.app(scope, receive, watch)
        if watch.status == 200 and scope.get("method") == "GET":
            self.audit.event("download", user=user, file=name)

    async def _sign_in(self, scope: dict, receive: Callable, send: Callable) -> None:
        connection = HTTPConnection(scope)
        peer = connection.client.host if connection.client else ""
        forwarded = ",".join(connection.headers.getlist("x-forwarded-for"))
        address = client_address(peer, forwarded, self.trusted_proxies)
        SIGN_IN_CLIENT.set(address)  # the audit record of the attempt (PasswordAuth) names it
        if self.limiter is None:
            return await self.app(scope, receive, send)
        key = f"{id(asyncio.get_running_loop())}:{client_key(address)}"  # a lock belongs to one event loop
        turn = self._sign_in_turns.get(key)
        if turn is None:
            turn = self._sign_in_turns[key] = asyncio.Lock()
        async with turn:
            await self._sign_in_once(scope, receive, send, address)

    async def _sign_in_once(self, scope: dict, receive: Callable, send: Callable, address: str) -> None:
        admission = self.limiter.admit(address)
        if not admission.admitted:
            wait = math.ceil(admission.wait_s)
            return await JSONResponse({"detail": f"Too many failed sign-ins from this address; try again in {wait} s."},
                                      status_code=429, headers={"Retry-After": str(wait)})(scope, receive, send)
        watch = StatusWatch(send)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.limiter.settle(admission, succeeded=watch.status == 200)  # Gradio answers 400 to wrong credentials


def guard_routes(api: Any, config: AppConfig, *, audit: Any = None, open_paths: tuple[str, ...] | None = None,
                 sign_in_url: str = "") -> None:
    """Put a ``RouteGuard`` in front of ``api``, a FastAPI app with the Gradio app mounted at ``server.root_path``:
    sessions as Gradio sees them, signed out after ``auth.idle_logout_min`` without a request; sign-ins
    rate-limited (password login only) with state in ``config.login_state_file``; ``audit``: an
    ``app.audit.AuditLog`` for sign-ins, sign-outs and downloads; ``open_paths``: routes answering without a session
    (default the health routes); ``sign_in_url``: where the page sends a browser without a session (``app.oidc``)."""
    from gradio.routes import App as GradioApp

    gradio_app = next(r.app for r in api.routes if isinstance(getattr(r, "app", None), GradioApp))
    limiter = None
    if not (config.auth.trusted_header or config.auth.oidc_issuer):  # only m3's own password form is rate-limited here
        limiter = LoginLimiter(config.login_state_file, failures_before_delay=config.auth.failures_before_delay,
                               max_delay_s=config.auth.max_delay_s,
                               global_failures_per_minute=config.auth.global_failures_per_minute)
    activity = SessionActivity(config.auth.idle_logout_min * 60.0)

    def session_user(connection: HTTPConnection, refresh: bool = True) -> Any:
        return _active_user(gradio_app, connection, activity, audit, refresh)

    extra = {"open_paths": open_paths} if open_paths is not None else {}
    api.add_middleware(RouteGuard, session_user=session_user, mount_path=config.server.root_path or "/", limiter=limiter,
                       trusted_proxies=config.auth.trusted_proxies, audit=audit, sign_in_url=sign_in_url, **extra)


class SessionActivity:
    """When each session (a login token, or a proxy-header user) last made a request; one idle longer than
    ``idle_s`` (0 = never) counts as ended. Thread-safe enough for dict operations under the GIL."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self._seen: dict[str, float] = {}

    def touch(self, key: str, *, refresh: bool = True) -> str:
        """``"new"`` (first request), ``"active"`` or ``"expired"`` (idle too long: forgotten, so the next
        request is ``"new"``); ``refresh=False`` checks without counting the request as activity."""
        now, last = self.clock(), self._seen.get(key)
        if last is not None and self.idle_s and now - last > self.idle_s:
            self._seen.pop(key, None)
            return "expired"
        if refresh or last is None:
            self._seen[key] = now
        return "new" if last is None else "active"


def behind_proxies(app: Any, trusted_proxies: tuple[str, ...]) -> Any:
    """``app`` behind uvicorn's ``ProxyHeadersMiddleware`` trusting ``trusted_proxies`` (IPs or CIDRs; uvicorn's
    ``forwarded_allow_ips``): the client address and scheme come from X-Forwarded-For / -Proto sent by a listed
    proxy. The raw TCP peer is kept in ``scope[RAW_PEER]``, so ``TrustedHeaderAuth`` still judges the proxy itself."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    forwarded = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted_proxies))

    async def keep_raw_peer(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            scope[RAW_PEER] = scope["client"][0]
        await forwarded(scope, receive, send)

    return keep_raw_peer


# --- private helpers ---------------------------------------------------------------------------


def _active_user(gradio_app: Any, connection: HTTPConnection, activity: SessionActivity, audit: Any, refresh: bool) -> Any:
    """The signed-in user exactly as Gradio's own ``/gradio_api/user`` finds it (``gradio.routes``
    ``get_current_user``: its auth dependency, else the session cookie set by ``/login``), or ``None`` once the
    session was idle too long (its login token, or the single sign-on session, is dropped, so the page shows the
    login form or sends the browser to the provider again)."""
    if gradio_app.auth_dependency is not None:
        dependency = gradio_app.auth_dependency
        user = dependency(connection)
        if user is not None and hasattr(dependency, "end_session"):  # a sign-in session of its own (app.oidc)
            if activity.touch(dependency.session_key(connection), refresh=refresh) == "expired":
                dependency.end_session(connection)
                if audit is not None:
                    audit.event("logout", user=user, reason="idle")
                return None
            return user
        if user is not None and activity.touch(f"header:{user}", refresh=refresh) == "new" and audit is not None:
            audit.event("login", user=user, method="proxy header", client=connection.client.host if connection.client else "")
        return user
    token = (connection.cookies.get(f"access-token-{gradio_app.cookie_id}")
             or connection.cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}"))
    user = gradio_app.tokens.get(token) if token else None
    if user is not None and activity.touch(token, refresh=refresh) == "expired":
        gradio_app.tokens.pop(token, None)
        if audit is not None:
            audit.event("logout", user=user, reason="idle")
        return None
    return user


def _route_path(scope: dict) -> str:
    """The path the router matches: ``scope["path"]`` less ``root_path`` (as Starlette's routing does)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path
