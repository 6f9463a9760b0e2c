"""How many requests ``m3 serve-lm`` takes at once: ``max_running`` generate, ``max_waiting`` more wait their turn in
arrival order, and one beyond both is refused at once with HTTP 429 (the OpenAI client retries it after a pause).

The model generates one request per slot (no batching across requests), so the queue bounds both the memory a burst
can claim and the time an admitted request waits: at most ``max_running + max_waiting - 1`` requests are ahead of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vlm.lm_server.protocol import ServeError

__all__ = ["Admission", "DEFAULT_MAX_QUEUE"]

DEFAULT_MAX_QUEUE = 16  # requests waiting beyond those generating; `m3 serve-lm --max-queue`


class Admission:
    """The request limits of one server. ``admit()`` takes a place or raises ``ServeError`` (429); the place is held
    from then until the ``turn()`` it opens ends. Used from the server's event loop only."""

    def __init__(self, max_running: int = 1, max_waiting: int = DEFAULT_MAX_QUEUE) -> None:
        if max_running < 1:
            raise ServeError(f"max_concurrency must be >= 1, got {max_running}.")
        if max_waiting < 0:
            raise ServeError(f"max_queue must be >= 0, got {max_waiting}.")
        self.max_running, self.max_waiting = max_running, max_waiting
        self.admitted = 0  # generating + waiting
        self._slots = asyncio.Semaphore(max_running)

    @property
    def limit(self) -> int:
        return self.max_running + self.max_waiting

    def admit(self) -> _Place:
        """A place in line, or ``ServeError`` with status 429 when ``max_running + max_waiting`` are taken."""
        if self.admitted >= self.limit:
            raise ServeError(
                f"m3 serve-lm is busy: {self.max_running} request(s) generating and {self.max_waiting} waiting, the most it "
                f"takes (--max-concurrency {self.max_running}, --max-queue {self.max_waiting}); retry in a few seconds.",
                status=429, kind="rate_limit_error", code="server_busy")
        self.admitted += 1
        return _Place(self)


class _Place:
    """One admitted request: ``async with place.turn():`` waits for a generation slot and frees both at the end."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._open = True

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with self._admission._slots:
                yield
        finally:
            self.release()

    def release(self) -> None:
        """Give the place back (idempotent): for a request that ends before its turn."""
        if self._open:
            self._open = False
            self._admission.admitted -= 1
