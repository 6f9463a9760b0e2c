"""Who may use the app: password logins (salted scrypt / PBKDF2 hashes) or a trusted reverse-proxy header.

Users come from a TOML or JSON file (``[users]`` table / ``{"users": {...}}``, username → hash, e.g.
``alice = "scrypt$16384$8$1$<salt>$<hash>"``; the ``auth.users_file`` setting) or from the
environment variable ``M3_USERS`` (``alice:scrypt$...;bob:pbkdf2_sha256$...``). Hashes are made with
``m3 hash-password``. Plain-text passwords are never accepted. Binding to anything but a loopback
address without one of the two methods configured is refused (``require_auth_for_host``).

``RouteGuard`` keeps every route but the page, ``/login``, static assets and the health routes behind a session,
rate-limits sign-ins per client address (``app.login_limits``), signs out sessions idle past
``auth.idle_logout_min`` and writes sign-ins, failed sign-ins, sign-outs and report downloads to the audit log.
The proxy header and X-Forwarded-For are believed only from ``auth.trusted_proxies``; ``behind_proxies`` wraps the
app in uvicorn's forwarded-header middleware trusting the same list, keeping the raw peer for the header check.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketClose

from app.config import AppConfig, ConfigError
from app.login_limits import LoginLimiter, client_key
from app.password_policy import check_password

__all__ = [
    "hash_password",
    "verify_password",
    "load_users",
    "PasswordAuth",
    "TrustedHeaderAuth",
    "valid_username",
    "client_address",
    "RouteGuard",
    "guard_routes",
    "PUBLIC_PATHS",
    "is_loopback",
    "require_auth_for_host",
    "check_login_methods",
    "SessionActivity",
    "behind_proxies",
    "RAW_PEER",
]

log = logging.getLogger(__name__)
USERS_ENV = "M3_USERS"
MAX_USERNAME_CHARS = 64
# Paths under the Gradio mount that answer without a session: the page (it shows the login form), the
# login itself and static assets. Everything else needs a session (RouteGuard).
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/robots.txt",
                          "/manifest.json", "/pwa_icon"})
PUBLIC_PREFIXES = ("/static/", "/assets/", "/svelte/", "/pwa_icon/")
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_USERNAME = re.compile(rf"[A-Za-z0-9._@-]{{1,{MAX_USERNAME_CHARS}}}")
RAW_PEER = "m3.raw_peer"  # scope key: the TCP peer before the forwarded-header middleware replaced it
_SIGN_IN_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("m3_sign_in_client", default="")
_DOWNLOAD = re.compile(r"(report|seg)[\w.-]*\.(md|pdf|dcm)")  # the report export's files (no PHI in these names)


def hash_password(password: str, *, username: str = "", n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """A salted scrypt hash ``scrypt$n$r$p$salt_b64$hash_b64`` of ``password`` (16-byte salt, 32-byte key).

    Raises ``PasswordPolicyError`` (a ``ConfigError``) for a password ``app.password_policy`` refuses."""
    check_password(password, username)
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=_SCRYPT_MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded`` (``scrypt$...`` or ``pbkdf2_sha256$iterations$salt$hash``).

    Comparison is constant-time; a malformed hash raises ``ConfigError`` (a configuration mistake, not a
    wrong password).
    """
    scheme, _, rest = encoded.partition("$")
    parts = rest.split("$")
    try:
        if scheme == "scrypt" and len(parts) == 5:
            n, r, p = (int(x) for x in parts[:3])
            salt, key = _unb64(parts[3]), _unb64(parts[4])
            got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=_SCRYPT_MAXMEM)
        elif scheme == "pbkdf2_sha256" and len(parts) == 3:
            iterations = int(parts[0])
            salt, key = _unb64(parts[1]), _unb64(parts[2])
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, dklen=len(key))
        else:
            raise ValueError(f"unknown scheme {scheme!r}")
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"password hash must look like 'scrypt$n$r$p$salt$hash' or 'pbkdf2_sha256$iterations$salt$hash', "
            f"got a malformed value ({exc}); regenerate it with `m3 hash-password`."
        ) from None
    return hmac.compare_digest(got, key)


def load_users(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Usernames → password hashes from ``path`` (TOML, or JSON if it ends in ``.json``) and ``$M3_USERS``.

    Every hash is checked for a known scheme so a plain-text password in the file fails at start-up.
    """
    env = os.environ if env is None else env
    users: dict[str, str] = {}
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
            if file.suffix == ".json":
                data = json.loads(text)
            else:
                import tomllib  # Python >= 3.11

                data = tomllib.loads(text)
        except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise ConfigError(
                f"users file {file} must be TOML with a [users] table (name = \"scrypt$...\") or JSON "
                f"{{\"users\": {{...}}}}; reading it failed: {exc}."
            ) from None
        table = data.get("users", data) if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise ConfigError(f"users file {file} must hold an object of username → hash, got {type(table).__name__}.")
        users.update({str(k): str(v) for k, v in table.items()})
    for item in filter(None, (s.strip() for s in env.get(USERS_ENV, "").split(";"))):
        name, sep, encoded = item.partition(":")
        if not sep or not name:
            raise ConfigError(f"${USERS_ENV} entries must be 'user:hash' separated by ';', got an entry without ':'.")
        users[name.strip()] = encoded.strip()
    for name, encoded in users.items():
        if encoded.split("$", 1)[0] not in ("scrypt", "pbkdf2_sha256"):
            raise ConfigError(
                f"user {name!r} has no password hash (expected 'scrypt$...' or 'pbkdf2_sha256$...'); "
                "plain-text passwords are refused — make one with `m3 hash-password`."
            )
    return users


@dataclass
class PasswordAuth:
    """The callable Gradio's login form calls: ``(username, password) -> bool``.

    Holds no counter per user name (a lock per name would let anyone lock a colleague out): attempts are
    rate-limited per client address by ``RouteGuard`` with an ``app.login_limits.LoginLimiter``.
    """

    users: dict[str, str]
    audit: Any = None  # an ``app.audit.AuditLog``: each attempt is written as ``login`` or ``login_failed``

    def __call__(self, username: str, password: str) -> bool:
        encoded = self.users.get(username)
        # Hash even for unknown users so response time does not reveal which names exist.
        ok = verify_password(password, encoded or _DUMMY_HASH) and encoded is not None
        if self.audit is not None:  # the name only when it could be one (never a password typed into the name box)
            self.audit.event("login" if ok else "login_failed", user=username if valid_username(username) else "[invalid]",
                             method="password", client=_SIGN_IN_CLIENT.get(), known_user=encoded is not None)
        return ok


@dataclass
class TrustedHeaderAuth:
    """Reads the user name a hospital's reverse proxy put in ``header`` (e.g. ``X-Forwarded-User``).

    Only requests whose TCP peer is in ``trusted_proxies`` (IPs or CIDR networks, ``auth.trusted_proxies``)
    are believed, and only names that pass ``valid_username``; anything else is refused (401). The peer is
    the raw connection's address: ``serve`` turns uvicorn's own X-Forwarded-For rewriting off.
    """

    header: str = "X-Forwarded-User"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    def __call__(self, request: Any) -> str | None:
        client = (getattr(request, "scope", None) or {}).get(RAW_PEER) or getattr(getattr(request, "client", None), "host", None)
        if not client or not _in_networks(client, _networks(tuple(self.trusted_proxies))):
            return None
        user = request.headers.get(self.header, "").strip()
        if not user:
            return None
        if not valid_username(user):
            log.warning("refused the %s header from proxy %s: a user name must be 1-%d letters, digits or . _ @ -",
                        self.header, client, MAX_USERNAME_CHARS)
            return None
        return user


def valid_username(name: str) -> bool:
    """True for 1-64 characters of ASCII letters, digits and ``. _ @ -`` (what a proxy's login header may carry)."""
    return _USERNAME.fullmatch(name) is not None


def client_address(peer: str, forwarded_for: str, trusted_proxies: tuple[str, ...]) -> str:
    """The address a request came from: ``peer`` (the TCP peer), or, when ``peer`` is a trusted proxy, the
    nearest address in ``X-Forwarded-For`` that is not one (proxies append what they saw on the right)."""
    networks = _networks(tuple(trusted_proxies))
    if not forwarded_for or not _in_networks(peer, networks):
        return peer
    hops = [_strip_port(h) for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, networks):
            return hop
    return hops[0] if hops else peer


class RouteGuard:
    """ASGI middleware in front of the app with Gradio mounted at ``mount_path``.

    Only the page (``/``), ``/login``, static assets and the paths in ``open_paths`` (``/healthz``) answer
    without a session; everything else (``/gradio_api/cancel``, ``/openapi.json``, …) gets 401.
    ``session_user(connection)`` names the signed-in user or returns ``None``. With a ``limiter``, each
    ``POST /login`` is admitted or refused (429 with ``Retry-After``) by its client address first.
    """

    def __init__(self, app: Any, *, session_user: Callable[[HTTPConnection], Any], mount_path: str = "/",
                 limiter: LoginLimiter | None = None, trusted_proxies: tuple[str, ...] = (),
                 open_paths: tuple[str, ...] = ("/healthz", "/livez", "/readyz"), audit: Any = None):
        self.app = app
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
                await self._user(scope, refresh=False)
            return await self.app(scope, receive, send)
        user = await self._user(scope, refresh="/heartbeat/" not in path)  # the page's heartbeat is no activity
        if user is not None:
            if self.audit is not None and scope["type"] == "http":
                self._audit_request(page_path or path, str(user))
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008)(scope, receive, send)
        return await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)

    async def _user(self, scope: dict, *, refresh: bool) -> Any:
        connection = HTTPConnection(scope)
        user = self.session_user(connection, refresh=refresh) if self._takes_refresh else self.session_user(connection)
        return await user if inspect.isawaitable(user) else user

    def _audit_request(self, path: str, user: str) -> None:
        """Sign-outs and downloads of the report's files, by the signed-in ``user``."""
        if path in ("/logout", "/logout/"):
            self.audit.event("logout", user=user, reason="signed out")
        elif path.startswith("/gradio_api/file="):
            name = path.rsplit("/", 1)[-1]
            if _DOWNLOAD.fullmatch(name):
                self.audit.event("download", user=user, file=name)

    async def _sign_in(self, scope: dict, receive: Callable, send: Callable) -> None:
        connection = HTTPConnection(scope)
        peer = connection.client.host if connection.client else ""
        forwarded = ",".join(connection.headers.getlist("x-forwarded-for"))
        address = client_address(peer, forwarded, self.trusted_proxies)
        _SIGN_IN_CLIENT.set(address)  # the audit record of the attempt (PasswordAuth) names it
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
        status = 0

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.limiter.settle(admission, succeeded=status == 200)  # Gradio answers 400 to wrong credentials


def guard_routes(api: Any, config: AppConfig, *, audit: Any = None, open_paths: tuple[str, ...] | None = None) -> None:
    """Put a ``RouteGuard`` in front of ``api``, a FastAPI app with the Gradio app mounted at ``server.root_path``:
    sessions as Gradio sees them, signed out after ``auth.idle_logout_min`` without a request; sign-ins
    rate-limited (password login only) with state in ``config.login_state_file``; ``audit``: an
    ``app.audit.AuditLog`` for sign-ins, sign-outs and downloads; ``open_paths``: routes answering without a session
    (default the health routes)."""
    from gradio.routes import App as GradioApp

    gradio_app = next(r.app for r in api.routes if isinstance(getattr(r, "app", None), GradioApp))
    limiter = None
    if not config.auth.trusted_header:
        limiter = LoginLimiter(config.login_state_file, failures_before_delay=config.auth.failures_before_delay,
                               max_delay_s=config.auth.max_delay_s,
                               global_failures_per_minute=config.auth.global_failures_per_minute)
    activity = SessionActivity(config.auth.idle_logout_min * 60.0)

    def session_user(connection: HTTPConnection, refresh: bool = True) -> Any:
        return _active_user(gradio_app, connection, activity, audit, refresh)

    extra = {"open_paths": open_paths} if open_paths is not None else {}
    api.add_middleware(RouteGuard, session_user=session_user, mount_path=config.server.root_path or "/", limiter=limiter,
                       trusted_proxies=config.auth.trusted_proxies, audit=audit, **extra)


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


def check_login_methods(trusted_header: str, users: Mapping[str, str]) -> None:
    """Refuse two login methods at once: a proxy header and m3's own passwords (file or ``$M3_USERS``)."""
    if trusted_header and users:
        raise ConfigError(
            f"both login methods are configured: auth.trusted_header ({trusted_header}) and {len(users)} password "
            f"user(s) (auth.users_file or ${USERS_ENV}). Expected one; unset the users to sign in through the proxy, "
            "or unset auth.trusted_header to use passwords."
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_auth_for_host(host: str, auth_configured: bool) -> None:
    """Refuse to serve on a non-loopback address without login or a trusted proxy header."""
    if not is_loopback(host) and not auth_configured:
        raise ConfigError(
            f"refusing to listen on {host!r} without authentication: anyone on the network could read studies. "
            f"Configure users (a users file or ${USERS_ENV}) or a trusted proxy header, or bind to 127.0.0.1."
        )


def _active_user(gradio_app: Any, connection: HTTPConnection, activity: SessionActivity, audit: Any, refresh: bool) -> Any:
    """The signed-in user exactly as Gradio's own ``/gradio_api/user`` finds it (``gradio.routes``
    ``get_current_user``: its auth dependency, else the session cookie set by ``/login``), or ``None`` once the
    session was idle too long (its login token is dropped, so the page shows the login form again)."""
    if gradio_app.auth_dependency is not None:
        user = gradio_app.auth_dependency(connection)
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


@functools.lru_cache(maxsize=32)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in_networks(host: str, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def _strip_port(hop: str) -> str:
    """``"[::1]:80"`` → ``"::1"``, ``"10.0.0.1:5000"`` → ``"10.0.0.1"``, anything else stripped as is."""
    hop = hop.strip()
    if hop.startswith("[") and "]" in hop:
        return hop[1:hop.index("]")]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


# A fixed hash of a random password, verified against for unknown usernames (constant-time logins).
_DUMMY_HASH = "scrypt$16384$8$1$" + _b64(b"m3-dummy-salt-16") + "$" + _b64(b"\x00" * 32)
