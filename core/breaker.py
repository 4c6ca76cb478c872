"""Circuit breakers for the stores the request path reads (Redis, PostgreSQL), so an outage costs a request nothing."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from django.conf import settings

from core import registry
from core.metrics import metrics

logger = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"


class CircuitBreaker:
    """One store's health as this process last saw it.

    Closed, everybody uses the store. A failure opens it: callers then skip the store at
    once (cached values, local state, or the documented refusal) instead of each waiting
    for a timeout. Every ``STORE_RETRY_INTERVAL`` seconds one caller is let through as a
    trial (half-open); mostly a background refresh or poll, so no request waits on it.
    The trial's success, or any other success, closes the breaker.
    """

    def __init__(self, store: str) -> None:
        self.store = store
        self.state = CLOSED
        self.since: float | None = None  # wall clock: when it opened
        self.reason = ""
        self.openings = 0
        self._retry_at = 0.0
        self._lock = threading.Lock()
        metrics.store_breaker_state(store, CLOSED)
        registry.register(f"breaker.{store}", reset=self.reset)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def allow(self) -> bool:
        """May the caller use the store now? While open, one caller per retry interval may (the trial)."""
        if self.state == CLOSED:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        with self._lock:
            if self.state == CLOSED:
                return True
            if now < self._retry_at:
                return False
            self._retry_at = now + settings.STORE_RETRY_INTERVAL
            self._set(HALF_OPEN)
        return True

    def failure(self, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        with self._lock:
            self.reason = reason[:200]
            self._retry_at = time.monotonic() + settings.STORE_RETRY_INTERVAL
            if self.state == CLOSED:
                self.since = time.time()
                self.openings += 1
                logger.warning("%s unreachable, serving from caches: %s", self.store, self.reason)
                metrics.store_breaker_opened(self.store)
            self._set(OPEN)

    def success(self) -> None:
        if self.state == CLOSED:
            return
        with self._lock:
            if self.state == CLOSED:
                return
            down_for = time.time() - (self.since or time.time())
            self.since = None
            self.reason = ""
            self._set(CLOSED)
        logger.warning("%s answers again after %.1f s", self.store, down_for)

    def reset(self) -> None:
        """Back to closed, forgetting the history (tests, and a process that starts over)."""
        with self._lock:
            self.since, self.reason, self._retry_at = None, "", 0.0
            self._set(CLOSED)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            metrics.store_breaker_state(self.store, state)

    def describe(self) -> dict[str, Any]:
        """The state for readiness: ``since`` (ISO 8601, UTC) and ``reason`` while not closed."""
        if self.state == CLOSED:
            return {"state": CLOSED}
        since = dt.datetime.fromtimestamp(self.since or time.time(), tz=dt.UTC)
        return {"state": self.state, "since": since.isoformat(timespec="seconds"), "reason": self.reason}


redis_breaker = CircuitBreaker("redis")
database_breaker = CircuitBreaker("database")
BREAKERS = (redis_breaker, database_breaker)


def redis_options() -> dict[str, Any]:
    """Client options for Redis on the request path: short timeouts and no retries (the breaker decides)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout = settings.REDIS_SOCKET_TIMEOUT
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}


def redis_sync_options() -> dict[str, Any]:
    """The same for a synchronous client (publishing a change from a service)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = settings.REDIS_SOCKET_TIMEOUT
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
