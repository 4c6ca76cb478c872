"""This process's quota store: its counters (Redis or in-process), the settlement batch feeding them, drain and state.

Both are per-process singletons on ``core.registry``: the tests put their own in place with
``counters.replace(...)`` and ``settle_batch.replace(...)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from core.batch_writer import ReplayResult
from core.dead_letters import DeadLetterFile
from core.registry import Singleton
from tenants.quota.local_counters import LocalCounters
from tenants.quota.redis_counters import RedisCounters
from tenants.quota.settlements import Counters, SettleBatch

logger = logging.getLogger(__name__)

# Run in a thread each time the store answers again after an outage: the routing app adds
# the reconcile from its usage records (``routing.quota_reconcile``), which tenants cannot read.
after_outage: list[Callable[[], object]] = []
# The reconciles started after an outage (kept referenced until they end).
_reconciling: set[asyncio.Future[Any]] = set()


def _counters_make() -> Counters:
    url = settings.QUOTA_REDIS_URL
    return RedisCounters(url, caught_up=quota_caught_up) if url else LocalCounters()


counters: Singleton[Counters] = Singleton("quota.counters", _counters_make)


class SettleBatchSingleton(Singleton[SettleBatch]):
    """The settlement batch; also the writer ``settings.BATCH_WRITERS`` names, whose dead letters
    ``manage.py dead_letters`` lists and replays."""

    @property
    def dead_letters(self) -> DeadLetterFile:
        return self().dead_letters

    def replay(self) -> ReplayResult:
        return self().replay()


async def _drain(batch: SettleBatch) -> None:
    in_flight: list[asyncio.Task[None]] = [*batch.flushing]
    store = counters.peek()
    if isinstance(store, RedisCounters):
        in_flight += store.sending
    loop = asyncio.get_running_loop()
    # A task of a loop that has ended (a test's, an async_to_sync call's) never finishes.
    in_flight = [task for task in in_flight if task.get_loop() is loop]
    if in_flight:
        await asyncio.wait(in_flight)
    await batch.flush()
    if batch.pending:
        # Lost with this process: the budgets get them back from the usage records at the next
        # reconcile pass past them; per-minute counters and leases heal with their windows.
        logger.warning("quota settlements: %d counters not sent before exit (quota store unreachable)", batch.pending)


settle_batch = SettleBatchSingleton(SettleBatch.name, lambda: SettleBatch(counters), aflush=_drain)


async def quota_settle_flush() -> None:
    """Send every settlement still waiting (for a draining server, before it exits; bound it
    with ``asyncio.timeout``). The registry's ``aflush_all`` does the same."""
    await _drain(settle_batch())


async def quota_caught_up() -> None:
    """The store answers again: send the settlements kept meanwhile, reconcile from the records."""
    await settle_batch().flush()
    for reconcile in after_outage:
        task = asyncio.ensure_future(asyncio.to_thread(reconcile))
        _reconciling.add(task)
        task.add_done_callback(_reconciling.discard)


def quota_store_state() -> dict[str, Any]:
    """The quota store as this process sees it, for readiness and metrics: where counters live,
    whether the breaker is open (and since when, and why)."""
    store = counters()
    if isinstance(store, LocalCounters):
        return {"store": "in-process", "open": False}
    breaker = store.breaker
    opened = breaker.opened_at
    return {
        "store": "redis",
        "open": opened is not None,
        "open_for_s": 0.0 if opened is None else round(time.monotonic() - opened, 3),
        "last_error": breaker.last_error if opened is not None else "",
        "openings": breaker.openings,
    }
