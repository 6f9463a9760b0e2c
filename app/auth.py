"""Who may use the app: password logins (salted scrypt / PBKDF2 hashes) or a trusted reverse-proxy header (OpenID
Connect single sign-on is ``app.oidc``'s).

Users come from a TOML or JSON file (``[users]`` table / ``{"users": {...}}``, username → hash, e.g.
``alice = "scrypt$16384$8$1$<salt>$<hash>"``; the ``auth.users_file`` setting) or from the
environment variable ``M3_USERS`` (``alice:scrypt$...;bob:pbkdf2_sha256$...``). Hashes are made with
``m3 hash-password``. Plain-text passwords are never accepted. Binding to anything but a loopback
address without one of the two methods configured is refused (``require_auth_for_host``).

Which routes need a session, idle logout, sign-in rate limits and the forwarded-header handling are
``app.route_guard``'s; the proxy header and X-Forwarded-For are believed only from ``auth.trusted_proxies``.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from app.config import ConfigError
from app.password_policy import check_password

__all__ = [
    "hash_password",
    "verify_password",
    "load_users",
    "PasswordAuth",
    "TrustedHeaderAuth",
    "valid_username",
    "client_address",
    "is_loopback",
    "require_auth_for_host",
    "check_login_methods",
    "RAW_PEER",
    "SIGN_IN_CLIENT",
]

log = logging.getLogger(__name__)
USERS_ENV = "M3_USERS"
MAX_USERNAME_CHARS = 64
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_USERNAME = re.compile(rf"[A-Za-z0-9._@-]{{1,{MAX_USERNAME_CHARS}}}")
RAW_PEER = "m3.raw_peer"  # scope key: the TCP peer before the forwarded-header middleware replaced it
SIGN_IN_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("m3_sign_in_client", default="")


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
                             method="password", client=SIGN_IN_CLIENT.get(), known_user=encoded is not None)
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


def check_login_methods(trusted_header: str, users: Mapping[str, str], oidc_issuer: str = "") -> None:
    """Refuse more than one login method at once: a proxy header, OIDC single sign-on (``app.oidc``) and m3's own
    passwords (file or ``$M3_USERS``)."""
    methods = [f"auth.trusted_header ({trusted_header})"] if trusted_header else []
    if oidc_issuer:
        methods.append(f"auth.oidc_issuer ({oidc_issuer})")
    if users:
        methods.append(f"{len(users)} password user(s) (auth.users_file or ${USERS_ENV})")
    if len(methods) > 1:
        raise ConfigError(
            f"{'both' if len(methods) == 2 else 'several'} login methods are configured: {' and '.join(methods)}. "
            "Expected one; keep the one the site uses and unset the others (the users, to sign in through the proxy "
            "or single sign-on)."
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
            f"Configure users (a users file or ${USERS_ENV}), a trusted proxy header or auth.oidc_issuer, or bind to "
            "127.0.0.1."
        )


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
