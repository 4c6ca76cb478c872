"""A shared change counter that lets every process drop an in-process cache soon after a change."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


class SharedEpoch:
    """A value in the Django cache (Redis when configured) that moves whenever ``bump`` is called.

    ``moved`` reads it at most every ``KEY_REVOCATION_POLL`` seconds, so a hot path pays
    one cache read per second per process, not one per request.
    """

    def __init__(self, name: str) -> None:
        self.key = f"epoch:{name}"
        self._seen: object = None
        self._checked_at = 0.0

    async def moved(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at < settings.KEY_REVOCATION_POLL:
            return False
        self._checked_at = now
        try:
            value = await cache.aget(self.key)
        except Exception:  # Redis down: callers fall back on their TTL.
            logger.warning("shared epoch %s unavailable", self.key, exc_info=True)
            return False
        if value != self._seen:
            self._seen = value
            return True
        return False

    def bump(self) -> None:
        try:
            cache.set(self.key, time.time_ns(), timeout=None)
        except Exception:
            logger.warning("could not publish %s; other processes see the change when their cache expires", self.key)
