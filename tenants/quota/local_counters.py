"""Quota counters kept in this process: the embedded mode without Redis, with the same all-or-nothing semantics."""

from __future__ import annotations

import math
import time

from tenants.quota.checks import Adjustment, Check
from tenants.quota.scripts import SLOTS


class LocalCounters:
    """In-process counters with the same all-or-nothing semantics (one event loop, no await inside)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}

    def _get(self, key: str, now: float) -> int:
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > now else 0

    async def reserve(self, checks: list[Check]) -> tuple[int, int, list[int]]:
        now = time.monotonic()
        for index, check in enumerate(checks, start=1):
            current = self._get(check.key, now)
            if current + check.amount > check.limit:
                return index, current, []
        values = []
        for check in checks:
            value = self._get(check.key, now) + check.amount
            if check.store == SLOTS:
                # This process's own requests in flight: they end with it, and a count that
                # expired while requests are still in flight would admit past the limit.
                expires = math.inf
            else:
                expires = self._values.get(check.key, (0, 0.0))[1]
                if expires <= now:
                    expires = now + check.ttl_ms / 1000
            self._values[check.key] = (value, expires)
            values.append(value)
        if len(self._values) > 200_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        return 0, 0, values

    async def values(self, checks: list[Check]) -> list[int]:
        now = time.monotonic()
        return [self._get(check.key, now) for check in checks]

    async def settle(self, adjustments: list[Adjustment]) -> list[int]:
        now = time.monotonic()
        for store, key, _, delta, ttl_ms in adjustments:
            value, expires = self._values.get(key, (0, 0.0))
            if expires <= now:
                value, expires = 0, (math.inf if store == SLOTS else now + ttl_ms / 1000)
            self._values[key] = (max(0, value + delta), expires)
        return []
