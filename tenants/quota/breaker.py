"""A circuit breaker for the quota store, so a store that stopped answering costs a request nothing.

One failure opens it, and while it is open calls fail at once, without touching the socket;
a probe task off the request path closes it again when the store answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class StoreUnavailable(ConnectionError):
    """The store's breaker is open: the call was refused here, without touching the socket."""


class StoreBreaker:
    """A circuit breaker for one store, for every event loop of the process.

    Closed, calls go through. The first call that fails without an answer from the store (a
    timeout, a refused or dropped connection) opens it: from then on ``check`` raises
    ``StoreUnavailable`` at once, so a black-holed store costs a request at most one timeout,
    once. While open, a task probes the store every ``retry_interval`` seconds; the first
    probe that gets an answer closes the breaker and runs ``on_close`` (resend what was kept).
    """

    def __init__(
        self,
        name: str,
        *,
        retry_interval: float,
        probe: Callable[[], Awaitable[object]],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.retry_interval = retry_interval
        self._probe = probe
        self._on_close = on_close
        self.opened_at: float | None = None  # time.monotonic() when it opened; None while closed
        self.last_error = ""
        self.openings = 0
        self._probing: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def check(self) -> None:
        """Raise ``StoreUnavailable`` while open (and make sure a probe runs on this loop)."""
        if self.opened_at is None:
            return
        self._probe_soon()
        raise StoreUnavailable(f"{self.name} unavailable ({self.last_error}); circuit open")

    def failed(self, exc: BaseException) -> None:
        """A call got no answer from the store: open, and probe off the request path."""
        if isinstance(exc, StoreUnavailable):
            return
        self.last_error = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
        if self.opened_at is None:
            self.opened_at = time.monotonic()
            self.openings += 1
            logger.warning(
                "%s unreachable (%s): circuit open, retried every %gs", self.name, self.last_error, self.retry_interval
            )
        self._probe_soon()

    def _probe_soon(self) -> None:
        task = self._probing
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # A probe runs on one loop; one whose loop has ended (a test's, async_to_sync's) is replaced.
        if task is not None and not task.done():
            owner = task.get_loop()
            if owner is loop or (owner.is_running() and not owner.is_closed()):
                return
        self._probing = loop.create_task(self._probe_until_closed())

    async def _probe_until_closed(self) -> None:
        while self.opened_at is not None:
            await asyncio.sleep(self.retry_interval)
            try:
                await self._probe()
            except Exception as exc:  # still unreachable: stay open
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                continue
            outage = time.monotonic() - (self.opened_at or time.monotonic())
            self.opened_at = None
            logger.warning("%s answers again after %.1fs: circuit closed", self.name, outage)
            if self._on_close is not None:
                try:
                    await self._on_close()
                except Exception:
                    logger.exception("%s: catching up after the outage failed", self.name)
