"""Who may use the app: password logins (salted scrypt / PBKDF2 hashes) or a trusted reverse-proxy header.

Users come from a TOML or JSON file (``[users]`` table / ``{"users": {...}}``, username → hash, e.g.
``alice = "scrypt$16384$8$1$<salt>$<hash>"``; the ``auth.users_file`` setting) or from the
environment variable ``M3_USERS`` (``alice:scrypt$...;bob:pbkdf2_sha256$...``). Hashes are made with
``m3 hash-password``. Plain-text passwords are never accepted. Binding to anything but a loopback
address without one of the two methods configured is refused (``require_auth_for_host``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from app.config import ConfigError

__all__ = [
    "hash_password",
    "verify_password",
    "load_users",
    "PasswordAuth",
    "TrustedHeaderAuth",
    "is_loopback",
    "require_auth_for_host",
]

USERS_ENV = "M3_USERS"
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """A salted scrypt hash ``scrypt$n$r$p$salt_b64$hash_b64`` of ``password`` (16-byte salt, 32-byte key)."""
    if not password:
        raise ConfigError("password must not be empty; choose a password of at least 8 characters.")
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

    After ``max_failures`` wrong passwords for a username, that name is locked for ``lockout_s`` seconds
    (slows guessing; the lock is per process, in memory).
    """

    users: dict[str, str]
    max_failures: int = 5
    lockout_s: float = 60.0
    _failures: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, username: str, password: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if now - t < self.lockout_s]
            self._failures[username] = recent
            if len(recent) >= self.max_failures:
                return False
        encoded = self.users.get(username)
        # Hash even for unknown users so response time does not reveal which names exist.
        ok = verify_password(password, encoded or _DUMMY_HASH) and encoded is not None
        if not ok:
            with self._lock:
                self._failures.setdefault(username, []).append(now)
        return ok


@dataclass
class TrustedHeaderAuth:
    """Reads the user name a hospital's reverse proxy put in ``header`` (e.g. ``X-Forwarded-User``).

    Only requests coming from ``trusted_proxies`` (IPs or CIDR networks) are believed; any other request,
    or one without the header, is refused with 401 by Gradio.
    """

    header: str = "X-Forwarded-User"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    def __call__(self, request: Any) -> str | None:
        client = getattr(getattr(request, "client", None), "host", None)
        if not client or not self._trusted(client):
            return None
        user = request.headers.get(self.header, "").strip()
        return user or None

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.trusted_proxies)


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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


# A fixed hash of a random password, verified against for unknown usernames (constant-time logins).
_DUMMY_HASH = "scrypt$16384$8$1$" + _b64(b"m3-dummy-salt-16") + "$" + _b64(b"\x00" * 32)
