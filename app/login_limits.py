"""Sign-in rate limits: growing waits per client address and a global failure budget, kept across restarts.

Every sign-in attempt counts as a failure of its client address until it succeeds (so parallel attempts
cannot slip past the count). After ``failures_before_delay`` failures, each further failure makes that
address wait twice as long as the one before (1 s, 2 s, 4 s, … up to ``max_delay_s``); a success clears
its count. Addresses that have not signed in successfully in the last 30 days also share a budget of
``global_failures_per_minute``, so spraying from many addresses slows down as a whole while the
workstations that people sign in from keep only their own count. Nothing is counted per user name: failing
for a colleague's name never locks the colleague out. IPv6 addresses are counted per /64 network (one host
usually holds a whole /64).

The counters (client addresses, counts and times; never a user name or a password) live in a small JSON
file rewritten atomically after every attempt, so a restart does not reset them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["LoginLimiter", "Admission", "client_key"]

log = logging.getLogger(__name__)
_WINDOW_S = 60.0  # the global budget's window
_STATE_VERSION = 1


@dataclass(frozen=True)
class Admission:
    """The answer to one sign-in attempt: admitted when ``wait_s`` is 0, else refused for ``wait_s`` seconds.
    An admitted attempt is counted as a failure until ``LoginLimiter.settle`` says it succeeded."""

    key: str  # the counter it was charged to (``client_key``)
    wait_s: float
    at: float  # when it was counted (Unix time, s)
    in_global_budget: bool = False  # counted against the global budget too

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0


class LoginLimiter:
    """Per-address exponential waits plus a global failure budget per minute, persisted to ``state_file``.

    ``admit(address)`` before checking a password, ``settle(admission, succeeded)`` after. Thread-safe.
    ``clock`` gives Unix time in seconds (wall clock, so waits survive a restart).
    """

    def __init__(self, state_file: str | os.PathLike, *, failures_before_delay: int = 5, first_delay_s: float = 1.0,
                 max_delay_s: float = 900.0, global_failures_per_minute: int = 60, forget_after_s: float = 24 * 3600.0,
                 known_for_s: float = 30 * 24 * 3600.0, max_addresses: int = 4096, clock: Callable[[], float] = time.time):
        self.state_file = Path(state_file)
        self.failures_before_delay = failures_before_delay
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.global_failures_per_minute = global_failures_per_minute
        self.forget_after_s = forget_after_s  # an address's failures are forgotten this long after its last one
        self.known_for_s = known_for_s  # an address that signed in this recently is exempt from the global budget
        self.max_addresses = max_addresses  # the least recently active addresses are dropped beyond this
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: dict[str, _AddressCount] = {}
        self._recent: list[float] = []  # failure times of addresses without a recent sign-in, last minute
        self._global_logged_at = 0.0
        self._save_failed = False
        self._load()

    def admit(self, address: str) -> Admission:
        """Whether an attempt from ``address`` may go ahead; an admitted one is counted as a failure now."""
        key = client_key(address)
        with self._lock:
            now = self._clock()
            entry = self._addresses.get(key) or _AddressCount()  # stored only once an attempt is counted
            if entry.failures and now - entry.last_failure > self.forget_after_s:
                entry.failures, entry.blocked_until = 0, 0.0
            if entry.blocked_until > now:  # min(): a wall clock set back must not stretch a wait
                return Admission(key, min(entry.blocked_until - now, self.max_delay_s), now)
            known = entry.last_success > 0 and now - entry.last_success < self.known_for_s
            self._recent = [t for t in self._recent if now - t < _WINDOW_S]
            if not known and len(self._recent) >= self.global_failures_per_minute:
                if now - self._global_logged_at >= _WINDOW_S:
                    self._global_logged_at = now
                    log.warning("sign-in: %d failures in the last minute from addresses without a recent sign-in; "
                                "new addresses wait until the minute clears", len(self._recent))
                return Admission(key, max(_WINDOW_S - (now - self._recent[0]), 0.001), now)
            self._addresses[key] = entry
            entry.failures += 1
            entry.last_failure = now
            beyond = entry.failures - self.failures_before_delay
            if beyond > 0:
                entry.blocked_until = now + min(self.max_delay_s, self.first_delay_s * 2.0 ** min(beyond - 1, 60))
            if not known:
                self._recent.append(now)
            return Admission(key, 0.0, now, in_global_budget=not known)

    def settle(self, admission: Admission, succeeded: bool) -> None:
        """Record how an admitted attempt ended: a success clears its address's count; then save the state."""
        if not admission.admitted:
            return
        with self._lock:
            entry = self._addresses.setdefault(admission.key, _AddressCount())
            if succeeded:
                self._addresses[admission.key] = _AddressCount(last_success=self._clock())
                if admission.in_global_budget and admission.at in self._recent:
                    self._recent.remove(admission.at)
            elif entry.failures > self.failures_before_delay:
                log.warning("sign-in: %d failed attempts from %s; its next attempt waits %.0f s",
                            entry.failures, admission.key, max(entry.blocked_until - self._clock(), 0.0))
            self._save()

    def wait_s(self, address: str) -> float:
        """Seconds before ``address`` may try again (0 = now), without counting an attempt."""
        with self._lock:
            entry = self._addresses.get(client_key(address))
            return 0.0 if entry is None else max(0.0, min(entry.blocked_until - self._clock(), self.max_delay_s))

    # --- persistence ------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("sign-in counters in %s could not be read (%s); starting with none", self.state_file, exc)
            return
        try:
            if data.get("version") != _STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_STATE_VERSION}")
            self._addresses = {str(k): _AddressCount.from_json(v) for k, v in data["addresses"].items()}
            self._recent = sorted(float(t) for t in data.get("recent_failures", []))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("sign-in counters in %s have an unexpected shape (%s); starting with none", self.state_file, exc)
            self._addresses, self._recent = {}, []

    def _save(self) -> None:
        """Write the counters atomically (a temporary file in the same folder, then ``os.replace``); under the lock."""
        now = self._clock()
        self._prune(now)
        data = {"version": _STATE_VERSION, "addresses": {k: dataclasses.asdict(v) for k, v in self._addresses.items()},
                "recent_failures": self._recent}
        tmp = None
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=self.state_file.parent, prefix=".login-state-",
                                             suffix=".tmp", delete=False) as f:
                tmp = f.name
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
            self._save_failed = False
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            if not self._save_failed:  # once per outage; the counters still work in memory
                log.warning("sign-in counters could not be saved to %s (%s); a restart would reset them. "
                            "Make the folder writable or set auth.state_file.", self.state_file, exc)
            self._save_failed = True

    def _prune(self, now: float) -> None:
        self._recent = [t for t in self._recent if now - t < _WINDOW_S]
        for key, entry in list(self._addresses.items()):
            if entry.failures and now - entry.last_failure > self.forget_after_s:
                entry.failures, entry.blocked_until = 0, 0.0
            if not entry.failures and now - entry.last_success >= self.known_for_s:
                del self._addresses[key]
        if len(self._addresses) > self.max_addresses:
            newest = sorted(self._addresses.items(), key=lambda kv: kv[1].last_active, reverse=True)
            self._addresses = dict(newest[: self.max_addresses])


def client_key(address: str) -> str:
    """The counter an address is charged to: the IPv4 address, the IPv6 /64 network, or the text itself (≤ 64 chars)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class _AddressCount:
    failures: int = 0
    last_failure: float = 0.0  # Unix time, s
    blocked_until: float = 0.0  # no attempt from this address before this time
    last_success: float = 0.0

    @property
    def last_active(self) -> float:
        return max(self.last_failure, self.last_success)

    @classmethod
    def from_json(cls, value: dict) -> "_AddressCount":
        return cls(failures=int(value.get("failures", 0)), last_failure=float(value.get("last_failure", 0.0)),
                   blocked_until=float(value.get("blocked_until", 0.0)), last_success=float(value.get("last_success", 0.0)))
