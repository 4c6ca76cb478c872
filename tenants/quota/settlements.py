"""Quota settlements: what requests used, folded into one store call every few milliseconds, kept through an outage.

A counter the store refuses becomes a dead letter (``manage.py dead_letters``), replayed here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from redis.exceptions import ResponseError

from core.batch_writer import ReplayResult
from core.dead_letters import DeadLetterFile, record_line
from observability import metrics
from tenants.quota.breaker import StoreUnavailable
from tenants.quota.checks import Adjustment
from tenants.quota.lean_redis import RedisReplyError
from tenants.quota.local_counters import LocalCounters
from tenants.quota.redis_counters import RedisCounters
from tenants.quota.scripts import COUNTER, SLOTS

logger = logging.getLogger(__name__)

Counters = LocalCounters | RedisCounters
SETTLE_INTERVAL = 0.02
SETTLE_RETRY_INTERVAL = 1.0

# A settlement waiting to be sent: (store kind, counter key, extra, delta, epoch seconds when the counter ends).
Pending = tuple[str, str, int | bytes | str, int, float]


class SettleBatch:
    """Folds the settlements of many requests into one store call every few milliseconds.

    Each request would otherwise pay a second Redis round trip after its response; batched,
    the cost is shared. A released concurrency slot or a refunded reservation becomes
    visible to other requests at most ``SETTLE_INTERVAL`` later.

    A counter Redis cannot change (it holds something else, or would overflow) is refused
    alone; the others are settled, and the refused adjustment becomes a dead letter
    (``manage.py dead_letters``; counted in ``llmp_writer_dead_letters_total``). While
    Redis is unreachable, adjustments are kept (added up per counter, at most
    ``MAX_PENDING`` counters) and sent when its breaker closes (or every
    ``SETTLE_RETRY_INTERVAL``); one whose counter has ended meanwhile is dropped, there is
    nothing left to correct.
    """

    name = "settlements"
    MAX_PENDING = 100_000

    def __init__(self, store: Callable[[], Counters]) -> None:
        self._store = store  # the counters the adjustments go to
        # (store kind, key, extra) -> [delta, epoch seconds when the counter ends]
        self._pending: dict[tuple[str, str, int | bytes | str], list[Any]] = {}
        # The loop a flush is scheduled on; a flush scheduled on a loop that has since closed
        # (one loop per test, say) must not block every later one.
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self.dead_letters = DeadLetterFile(self.name)
        # The flushes on their way (kept referenced; the drain waits for them).
        self.flushing: set[asyncio.Task[None]] = set()

    def add(self, adjustments: list[Pending]) -> None:
        self._merge(adjustments)
        self._schedule(SETTLE_INTERVAL)

    @property
    def pending(self) -> int:
        """How many counters have adjustments waiting."""
        return len(self._pending)

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_later(delay, self._flush_soon)

    def _merge(self, adjustments: list[Pending]) -> None:
        dropped = 0
        for store, key, extra, delta, expires_at in adjustments:
            entry = self._pending.get((store, key, extra))
            if entry is None:
                if len(self._pending) >= self.MAX_PENDING:
                    dropped += 1
                    continue
                entry = self._pending[(store, key, extra)] = [0, expires_at]
            entry[0] += delta
            entry[1] = max(entry[1], expires_at)
        if dropped:
            metrics.writer_dropped_observe(self.name, "backlog", dropped)
            logger.error("quota settlements: %d dropped, Redis unreachable too long", dropped)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def flush(self) -> None:
        self._scheduled = None
        pending, self._pending = self._pending, {}
        now = time.time()
        adjustments: list[Adjustment] = []
        releases: dict[str, tuple[list[Any], float]] = {}  # key -> members, latest end: one ZREM per key
        for (store, key, extra), (delta, expires_at) in pending.items():
            if not delta or expires_at <= now:
                continue
            if store == SLOTS:
                members, ends = releases.get(key, ([], 0.0))
                members.extend(extra if isinstance(extra, tuple) else (extra,))
                releases[key] = (members, max(ends, expires_at))
            else:
                adjustments.append((store, key, extra, delta, int((expires_at - now) * 1000)))
        for key, (members, ends) in releases.items():
            adjustments.append((SLOTS, key, tuple(members), -len(members), int((ends - now) * 1000)))
        if not adjustments:
            return
        unsent, refused = await settle_isolating(self._store(), adjustments)
        if refused:
            self._dead_letter(refused)
        if unsent:
            now = time.time()
            self._merge([(store, key, extra, delta, now + ttl / 1000) for store, key, extra, delta, ttl in unsent])
            self._schedule(SETTLE_RETRY_INTERVAL)

    def _dead_letter(self, refused: list[tuple[Adjustment, str]]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = [
            record_line(
                {"time": now, "writer": self.name, "error": error, "attempts": 1, "row": _letter_row(adjustment)}
            )
            for adjustment, error in refused
        ]
        try:
            stored = self.dead_letters.append(lines, max_bytes=settings.DEAD_LETTER_MAX_BYTES)
        except OSError:
            logger.exception("quota settlements: the dead-letter file cannot be written")
            stored = 0
        metrics.writer_dead_letter_observe(self.name, stored)
        if stored < len(lines):
            metrics.writer_dropped_observe(self.name, "dead_letter_full", len(lines) - stored)
        logger.error(
            "quota settlements: Redis refused %d counters (e.g. %s); kept as dead letters", len(refused), refused[0][1]
        )

    def replay(self) -> ReplayResult:
        """Send the dead letters again; what Redis refuses stays, one whose window has ended is dropped."""
        if isinstance(self._store(), LocalCounters):
            # In-process counters belong to the server processes: nothing here to settle into.
            held = self.dead_letters.count()
            return ReplayResult(self.name, records=held, kept=held)
        return asyncio.run(self._replay())

    async def _replay(self) -> ReplayResult:
        result = ReplayResult(self.name)
        now = dt.datetime.now(dt.UTC)
        for path in self.dead_letters.set_aside():
            kept: list[bytes] = []
            live: list[Adjustment] = []
            origin: dict[int, dict[str, Any]] = {}  # id of an adjustment -> its record
            for record in self.dead_letters.records(path):
                result.records += 1
                try:
                    # [key, delta, ttl_ms, store kind, extra]; letters of earlier versions end after ttl_ms.
                    row = record["row"]
                    key, delta, ttl_ms = row[:3]
                    store, extra = (str(row[3]), row[4]) if len(row) >= 5 else (COUNTER, 0)
                    if isinstance(extra, list):
                        extra = tuple(extra)
                    ends = dt.datetime.fromisoformat(record["time"]) + dt.timedelta(milliseconds=int(ttl_ms))
                except (KeyError, TypeError, ValueError):
                    result.unreadable += 1
                    kept.append(record_line(record))
                    continue
                if ends <= now:
                    result.expired += 1  # the counter ended with its window: nothing left to settle
                    continue
                adjustment: Adjustment = (
                    store,
                    str(key),
                    extra,
                    int(delta),
                    max(1, int((ends - now).total_seconds() * 1000)),
                )
                live.append(adjustment)
                origin[id(adjustment)] = record
            unsent, refused = await settle_isolating(self._store(), live) if live else ([], [])
            result.written += len(live) - len(unsent) - len(refused)
            result.refused += len(refused)
            result.kept += len(kept) + len(unsent)
            kept += [record_line(origin[id(adjustment)]) for adjustment in unsent]
            for adjustment, error in refused:
                record = origin[id(adjustment)]
                kept.append(record_line(record | {"error": error, "attempts": int(record.get("attempts", 1)) + 1}))
            self.dead_letters.append(kept, max_bytes=1 << 62)  # accepted once already: never dropped here
            path.unlink()
        return result


def _letter_row(adjustment: Adjustment) -> list[Any]:
    """A refused adjustment as its dead letter keeps it (JSON): key, delta, ttl_ms, store kind, extra."""
    store, key, extra, delta, ttl_ms = adjustment
    if isinstance(extra, tuple):
        extra = [member.decode() if isinstance(member, bytes) else member for member in extra]
    return [key, delta, ttl_ms, store, extra.decode() if isinstance(extra, bytes) else extra]


async def settle_isolating(
    store: Counters, adjustments: list[Adjustment]
) -> tuple[list[Adjustment], list[tuple[Adjustment, str]]]:
    """Settle; returns what could not be sent (Redis unreachable) and what Redis refused, with why."""
    try:
        refused_at = await store.settle(adjustments)
    except (RedisReplyError, ResponseError) as exc:
        # Redis answered, but refused the call as a whole (the script settles nothing then):
        # halve it until the adjustment it refuses stands alone.
        if len(adjustments) == 1:
            return [], [(adjustments[0], f"{type(exc).__name__}: {exc}"[:500])]
        middle = len(adjustments) // 2
        first = await settle_isolating(store, adjustments[:middle])
        second = await settle_isolating(store, adjustments[middle:])
        return first[0] + second[0], first[1] + second[1]
    except Exception as exc:  # unreachable, timed out: keep for the next attempt
        if not isinstance(exc, StoreUnavailable):
            logger.warning("quota settle failed (%s); %d counters kept to send again", exc, len(adjustments))
        return adjustments, []
    return [], [
        (adjustments[position - 1], "refused by Redis (the counter holds a non-integer or would overflow)")
        for position in refused_at
    ]
