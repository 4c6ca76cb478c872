"""Change notices shared by every process through Redis, so in-process caches drop what changed elsewhere.

Each named epoch (``apikey``, ``deployment``, ``smart-routing``, ``mcp-catalog``) is a counter
and a short list of the changes that moved it, in Redis. ``bump`` adds a change (what changed:
tokens the cache understands, or ``*`` for everything). One poller thread per process reads every
counter in one round trip each ``KEY_REVOCATION_POLL`` seconds, with a short socket timeout
and no retries, and hands the new changes to the caches; the request path only
looks at what the poller delivered, so it never waits on Redis. While Redis is unreachable
the Redis breaker skips the poll (a trial each ``STORE_RETRY_INTERVAL``); changes published
meanwhile by others are read when it answers again (all of them, or ``*`` if more than the
list keeps). Without Redis, changes reach this process's caches only.
``KEY_REVOCATION_POLL=0`` reads Redis on every check instead (tests).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Any

from django.conf import settings

from core.breaker import redis_breaker, redis_options, redis_sync_options

logger = logging.getLogger(__name__)

ALL = "*"
HISTORY = 1000  # changes kept per epoch; a poller further behind drops everything instead

# KEYS: counter, list. ARGV: the change's tokens (space-separated), the list's length.
PUBLISH_LUA = """
local n = redis.call('INCR', KEYS[1])
redis.call('LPUSH', KEYS[2], n .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
return n
"""


class SharedEpoch:
    """One cache's view of a named epoch: the changes delivered to it and not yet taken."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = f"epoch:{name}"
        self._pending: list[str] = []
        self._lock = threading.Lock()
        bus.register(self)

    async def changes(self) -> list[str]:
        """The change tokens delivered since the last call (``*``: everything); costs no I/O when polled."""
        await bus.sync()
        if not self._pending:
            return []
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    async def moved(self) -> bool:
        """Has anything changed since the last call?"""
        return bool(await self.changes())

    def deliver(self, tokens: list[str]) -> None:
        with self._lock:
            self._pending.extend(tokens)

    def bump(self, *tokens: str) -> None:
        """Publish a change (``tokens`` name what changed; none: everything) to every process, this one at once."""
        bus.publish(self.name, list(tokens) or [ALL])


class _Bus:
    """This process's side of the shared epochs: the publisher and the one poller."""

    def __init__(self) -> None:
        self.epochs: dict[str, weakref.WeakSet[SharedEpoch]] = {}
        self.seen: dict[str, int] = {}  # the counter value read last, per epoch
        self.own: set[tuple[str, int]] = set()  # published here and delivered already
        self.missed = False  # a poll failed before the first one that read the counters
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._sync_client: Any = None
        self._sync_url = ""
        self._script: Any = None

    def register(self, epoch: SharedEpoch) -> None:
        self.epochs.setdefault(epoch.name, weakref.WeakSet()).add(epoch)

    def _deliver(self, name: str, tokens: list[str]) -> None:
        for epoch in list(self.epochs.get(name, ())):
            epoch.deliver(tokens)

    @staticmethod
    def _keys(name: str) -> tuple[str, str]:
        base = f"{settings.CACHE_KEY_PREFIX}:epoch:{name}"
        return base, f"{base}:changes"

    # Publishing ---------------------------------------------------------------------------

    def publish(self, name: str, tokens: list[str]) -> None:
        self._deliver(name, tokens)
        if not settings.REDIS_URL:
            return
        try:
            client = self._redis_sync()
            if self._script is None:
                self._script = client.register_script(PUBLISH_LUA)
            n = int(self._script(keys=list(self._keys(name)), args=[" ".join(tokens), HISTORY]))
        except Exception as exc:
            redis_breaker.failure(exc)
            logger.warning(
                "could not publish a change to %s (%s); other processes see it when their cached copy expires",
                name,
                exc,
            )
            return
        with self._lock:
            self.own.add((name, n))
            if len(self.own) > 4 * HISTORY:
                self.own.clear()

    # Polling ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Make sure the poller runs (cheap); with ``KEY_REVOCATION_POLL=0``, poll now."""
        if not settings.REDIS_URL:
            return
        if settings.KEY_REVOCATION_POLL <= 0:
            await self.poll()
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    # A thread, not a task: it outlives any one event loop, and a loop closing
                    # never cancels it in the middle of a Redis reply.
                    self._thread = threading.Thread(target=self._run, name="epoch-poller", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.poll_sync()
            except Exception:
                logger.exception("the change poller failed; trying again")
            time.sleep(max(settings.KEY_REVOCATION_POLL, 0.01))

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            import redis.asyncio as redis

            self._client = redis.Redis.from_url(settings.REDIS_URL, **redis_options())
            self._client_loop = loop
        return self._client

    def _redis_sync(self) -> Any:
        if self._sync_client is None or self._sync_url != settings.REDIS_URL:
            import redis

            self._sync_client = redis.Redis.from_url(settings.REDIS_URL, **redis_sync_options())
            self._sync_url = settings.REDIS_URL
            self._script = None
        return self._sync_client

    def _moved(self, names: list[str], counters: list[Any]) -> list[tuple[str, int | None, int]]:
        moved = []
        for name, raw in zip(names, counters, strict=True):
            counter = int(raw or 0)
            seen = self.seen.get(name)
            if seen != counter:
                moved.append((name, seen, counter))
        return moved

    def _lists_wanted(self, moved: list[tuple[str, int | None, int]]) -> list[tuple[str, int]]:
        return [
            (self._keys(name)[1], counter - seen - 1)
            for name, seen, counter in moved
            if seen is not None and 0 < counter - seen <= HISTORY
        ]

    def poll_sync(self) -> None:
        """``poll`` for the poller thread, on a synchronous client."""
        if not redis_breaker.allow():
            return
        names = sorted(self.epochs)
        try:
            client = self._redis_sync()
            moved = self._moved(names, client.mget([self._keys(name)[0] for name in names]))
            lists: list[list[bytes]] = []
            wanted = self._lists_wanted(moved)
            if wanted:
                pipe = client.pipeline(transaction=False)
                for key, last in wanted:
                    pipe.lrange(key, 0, last)
                lists = pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return
        self._apply(moved, lists)

    async def poll(self) -> None:
        """Read every epoch's counter (one round trip) and, for those that moved, their new changes."""
        if not redis_breaker.allow():
            return
        names = sorted(self.epochs)
        try:
            client = self._redis()
            moved = self._moved(names, await client.mget([self._keys(name)[0] for name in names]))
            lists: list[list[bytes]] = []
            wanted = self._lists_wanted(moved)
            if wanted:
                pipe = client.pipeline(transaction=False)
                for key, last in wanted:
                    pipe.lrange(key, 0, last)
                lists = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return
        self._apply(moved, lists)

    def _failed(self, exc: Exception) -> None:
        redis_breaker.failure(exc)
        if not self.seen:
            self.missed = True

    def _apply(self, moved: list[tuple[str, int | None, int]], lists: list[list[bytes]]) -> None:
        redis_breaker.success()
        entries = iter(lists)
        with self._lock:
            for name, seen, counter in moved:
                if seen is None:
                    # The first read sets where this process starts; if Redis was away before it,
                    # changes may have been missed, so everything is dropped once.
                    tokens = [ALL] if self.missed else []
                elif 0 < counter - seen <= HISTORY:
                    tokens = self._tokens(name, seen, counter, next(entries))
                else:  # too far behind, or Redis lost its data (the counter went back)
                    tokens = [ALL]
                if self.seen.get(name) == seen:  # another poll did not take these already
                    self.seen[name] = counter
                    if tokens:
                        self._deliver(name, tokens)
            self.missed = False

    def _tokens(self, name: str, seen: int, counter: int, entries: list[bytes]) -> list[str]:
        tokens: list[str] = []
        numbers = set()
        for raw in entries:
            number, _, text = raw.decode().partition(" ")
            n = int(number)
            if not seen < n <= counter:
                continue
            numbers.add(n)
            with self._lock:
                if (name, n) in self.own:
                    self.own.discard((name, n))
                    continue
            tokens.extend(text.split())
        if len(numbers) != counter - seen:
            return [ALL]  # a change is missing from the list (trimmed under us)
        return tokens


bus = _Bus()
