"""Quota counters in Redis, shared by every server process: reserves batched into one script call, leases renewed.

In Redis, a per-minute counter is a plain integer. A budget is a hash: the spend of the
requests started in each minute (one field per minute), ``t`` their total (what the limit
is checked against), and, once ``routing.quota_reconcile`` has run, ``r`` the spend the
usage records hold for the requests started before the minute ``w``. The concurrency limit
is a sorted set of the requests in flight, each a lease its process renews, so the slots
of a process that died free within ``QUOTA_PARALLEL_LEASE`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from tenants.quota.breaker import StoreBreaker
from tenants.quota.checks import Adjustment, Check
from tenants.quota.lean_redis import Script
from tenants.quota.script_clients import script_client, store_answered
from tenants.quota.scripts import BUDGET, COUNTER, LEASE, RESERVE, SETTLE, SLOTS, USAGE

logger = logging.getLogger(__name__)

# What a reserve answers: the failing check's index (1-based, 0: none), that counter's value
# before the request, and (when none failed) the counters' new values.
Reserved = tuple[int, int, list[int]]


class RedisCounters:
    """Counters in Redis. Reserves that arrive while a call is in flight wait and then go
    together in the next call, so under load one round trip serves many requests.

    Every call has ``QUOTA_STORE_TIMEOUT`` seconds and no retry; the first that gets no answer
    opens the breaker, and until a probe gets one, calls fail at once (``StoreUnavailable``).
    When it answers again, ``caught_up`` runs (it sends the settlements kept meanwhile) and the
    leases are renewed.
    """

    def __init__(self, url: str, *, caught_up: Callable[[], Awaitable[object]] | None = None) -> None:
        self.url = url
        self._waiting: list[tuple[list[Check], asyncio.Future[Reserved]]] = []
        self._sending = False
        # The batches on their way to Redis (kept referenced; the drain waits for them).
        self.sending: set[asyncio.Task[None]] = set()
        self._on_caught_up = caught_up
        self.breaker = StoreBreaker(
            "quota store (Redis)",
            retry_interval=settings.QUOTA_BREAKER_RETRY,
            probe=self._ping,
            on_close=self._caught_up,
        )
        # The requests in flight this process holds a concurrency slot for: key -> members.
        self._held: dict[str, set[bytes]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    async def _script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a quota script on this loop's client (see ``script_clients``)."""
        self.breaker.check()
        try:
            deadline = script is RESERVE or script is SETTLE
            return await script_client(self.url).evalsha(script, keys, args, deadline=deadline)
        except Exception as exc:
            if not store_answered(exc):
                self.breaker.failed(exc)
            raise

    async def _ping(self) -> None:
        await script_client(self.url).call("PING")

    async def _caught_up(self) -> None:
        """The store answers again: send what was kept, renew the leases."""
        if self._on_caught_up is not None:
            await self._on_caught_up()
        await self._renew_leases()

    async def reserve(self, checks: list[Check]) -> Reserved:
        self.breaker.check()  # open: refused here, before any work
        future: asyncio.Future[Reserved] = asyncio.get_running_loop().create_future()
        self._waiting.append((checks, future))
        if not self._sending:
            self._sending = True
            task = asyncio.ensure_future(self._send())
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)
        result = await future
        if not result[0]:
            for check in checks:
                if check.store == SLOTS:
                    self._hold(check.key, check.extra)  # type: ignore[arg-type]
        return result

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send_batch(batch)
        finally:
            self._sending = False

    async def _send_batch(self, batch: list[tuple[list[Check], asyncio.Future[Reserved]]]) -> None:
        keys: list[str] = []
        args: list[Any] = [len(batch)]
        for checks, _ in batch:
            args += [len(checks), "".join([check.store for check in checks])]
            for check in checks:
                keys.append(check.key)
                args += [check.limit, check.amount, check.ttl_ms]
                if check.store != COUNTER:
                    args.append(check.extra)
        try:
            reply = [int(value) for value in await self._script(RESERVE, keys, args)]
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        position = 0
        for checks, future in batch:
            failed = reply[position]
            result: Reserved
            if failed:
                result = (failed, reply[position + 1], [])
                position += 2
            else:
                result = (0, 0, reply[position + 1 : position + 1 + len(checks)])
                position += 1 + len(checks)
            if not future.done():
                future.set_result(result)

    def _hold(self, key: str, member: bytes) -> None:
        self._held.setdefault(key, set()).add(member)
        task = self._heartbeat
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases_while_held())

    def released(self, key: str, member: bytes) -> None:
        members = self._held.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._held[key]

    async def _renew_leases_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(settings.QUOTA_PARALLEL_LEASE / 3)
            if not self.breaker.is_open:
                try:
                    await self._renew_leases()
                except Exception as exc:  # the breaker has opened; its probe renews them on closing
                    logger.warning("renewing concurrency leases failed: %s", exc)

    async def _renew_leases(self) -> None:
        if not self._held:
            return
        keys: list[str] = []
        lease_ms = int(settings.QUOTA_PARALLEL_LEASE * 1000)
        args: list[Any] = [lease_ms]
        sent = [(key, tuple(members)) for key, members in self._held.items()]
        for key, members in sent:
            keys.append(key)
            args += [len(members), *members]
        await self._script(LEASE, keys, args)
        # A slot released while the renewal was on its way may have been added back by it (its
        # release reached Redis first): release it again, or it would hold a slot for a lease.
        stale: list[Adjustment] = []
        for key, members in sent:
            held = self._held.get(key, ())
            ended = tuple(member for member in members if member not in held)
            if ended:
                stale.append((SLOTS, key, ended, -len(ended), lease_ms))
        if stale:
            await self.settle(stale)

    async def values(self, checks: list[Check]) -> list[int]:
        if not checks:
            return []
        reply = await self._script(USAGE, [check.key for check in checks], [])
        return [int(value) for value in reply]

    async def settle(self, adjustments: list[Adjustment]) -> list[int]:
        """Apply the adjustments; returns the (1-based) positions of those Redis refused."""
        args: list[Any] = ["".join([store for store, _, _, _, _ in adjustments])]
        for store, _, extra, delta, ttl_ms in adjustments:
            if store == SLOTS:
                members = extra if isinstance(extra, tuple) else (extra,)
                args += [len(members), ttl_ms, *members]
            elif store == BUDGET:
                args += [delta, ttl_ms, extra]
            else:
                args += [delta, ttl_ms]
        reply = await self._script(SETTLE, [key for _, key, _, _, _ in adjustments], args)
        return [int(position) for position in reply or ()]
