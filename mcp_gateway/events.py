"""A bounded history of each resumable SSE stream's events, so ``Last-Event-ID`` resumes on any process.

Every event sent on a resumable stream is appended to its stream's log first; its SSE id
names the stream and the position (``<stream id>_<entry>``). A client that lost the
connection sends a GET with ``Last-Event-ID``; whichever process receives it reads the
entries after that position, and, for a request's stream whose response has not been
sent yet, waits for the rest. Redis streams hold the logs (trimmed to
``MCP_EVENT_HISTORY`` entries, expiring ``MCP_EVENT_TTL`` seconds after the last write);
without Redis the log is kept in the process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.breaker import redis_options
from core.registry import Singleton

ID_SEPARATOR = "_"
# Expired logs are swept once the process holds this many, and again at twice what a sweep left.
PRUNE_AT = 10_000


@dataclass(frozen=True, slots=True)
class StoredEvent:
    entry: str  # the position in the stream's log
    data: str  # the JSON-RPC message; "" for the event that primes a reconnection
    final: bool  # the response that ends a request's stream


@dataclass(frozen=True, slots=True)
class StreamInfo:
    session_id: str  # only this session may resume the stream
    kind: str  # "get" (the session's stream) or "post" (one request's response)


def event_id(stream_id: str, entry: str) -> str:
    return f"{stream_id}{ID_SEPARATOR}{entry}"


def event_id_parse(value: str | None) -> tuple[str, str] | None:
    """``(stream id, entry)`` of a ``Last-Event-ID``, or None when it is not one of ours."""
    if not value or ID_SEPARATOR not in value or len(value) > 128:
        return None
    stream_id, entry = value.split(ID_SEPARATOR, 1)
    if not stream_id.isalnum() or not _entry_valid(entry):
        return None
    return stream_id, entry


# Both parts of a Redis stream entry id are unsigned 64-bit integers; Redis refuses larger ones.
_ENTRY_PART_MAX = 2**64 - 1


def _entry_valid(entry: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() and Redis refuse.
    first, _, second = entry.partition("-")
    return all(
        part.isascii() and part.isdigit() and len(part) <= 20 and int(part) <= _ENTRY_PART_MAX
        for part in (first, second)
    )


def _entry_key(entry: str) -> tuple[int, int]:
    first, _, second = entry.partition("-")
    return int(first), int(second)


@dataclass(slots=True)
class _LocalStream:
    info: StreamInfo
    events: deque[StoredEvent]
    expires_at: float
    counter: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LocalEventLog:
    """The logs of one process (embedded mode: one server process, no Redis)."""

    def __init__(self) -> None:
        self._streams: dict[str, _LocalStream] = {}
        self._prune_at = PRUNE_AT

    def _live(self, stream_id: str) -> _LocalStream | None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.expires_at <= time.monotonic():
            del self._streams[stream_id]
            return None
        return stream

    async def open(self, stream_id: str, info: StreamInfo) -> str:
        if len(self._streams) > self._prune_at:
            # As for sessions: the next sweep waits until the logs have doubled, never one per new stream.
            now = time.monotonic()
            self._streams = {key: value for key, value in self._streams.items() if value.expires_at > now}
            self._prune_at = max(PRUNE_AT, 2 * len(self._streams))
        expires_at = time.monotonic() + settings.MCP_EVENT_TTL
        self._streams[stream_id] = _LocalStream(info, deque(maxlen=settings.MCP_EVENT_HISTORY), expires_at)
        return await self.append(stream_id, "")

    async def append(self, stream_id: str, data: str, *, final: bool = False) -> str:
        stream = self._live(stream_id)
        if stream is None:  # expired while open: start it again under the same id
            stream = self._streams[stream_id] = _LocalStream(
                StreamInfo("", "post"), deque(maxlen=settings.MCP_EVENT_HISTORY), 0.0
            )
        stream.counter += 1
        entry = f"{stream.counter}-0"
        stream.events.append(StoredEvent(entry, data, final))
        stream.expires_at = time.monotonic() + settings.MCP_EVENT_TTL
        stream.wake.set()
        stream.wake = asyncio.Event()
        return entry

    async def info(self, stream_id: str) -> StreamInfo | None:
        stream = self._live(stream_id)
        return None if stream is None else stream.info

    async def read(self, stream_id: str, after: str, *, wait: float = 0) -> list[StoredEvent]:
        stream = self._live(stream_id)
        if stream is None:
            return []
        position = _entry_key(after)
        events = [event for event in stream.events if _entry_key(event.entry) > position]
        if events or wait <= 0:
            return events
        try:
            await asyncio.wait_for(stream.wake.wait(), wait)
        except TimeoutError:
            return []
        return await self.read(stream_id, after)


class RedisEventLog:
    """The logs as Redis streams, shared by every server process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[tuple[asyncio.AbstractEventLoop, bool], Any] = {}

    def _client(self, *, blocking: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get((loop, blocking))
        if client is None:
            import redis.asyncio as redis

            options = redis_options()
            if blocking:
                # A blocking read waits up to a heartbeat: its socket must not time out first (read bounds it).
                options["socket_timeout"] = None
            client = redis.Redis.from_url(self.url, decode_responses=True, **options)
            self._clients[(loop, blocking)] = client
        return client

    @staticmethod
    def _key(stream_id: str) -> str:
        return f"{settings.CACHE_KEY_PREFIX}:mcp:events:{stream_id}"

    async def open(self, stream_id: str, info: StreamInfo) -> str:
        ttl = max(1, int(settings.MCP_EVENT_TTL))
        meta = json.dumps({"session": info.session_id, "kind": info.kind})
        await self._client().set(f"{self._key(stream_id)}:info", meta, ex=ttl)
        return await self.append(stream_id, "")

    async def append(self, stream_id: str, data: str, *, final: bool = False) -> str:
        key, ttl = self._key(stream_id), max(1, int(settings.MCP_EVENT_TTL))
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.xadd(
                key, {"d": data, "f": "1" if final else "0"}, maxlen=settings.MCP_EVENT_HISTORY, approximate=False
            )
            pipe.expire(key, ttl)
            pipe.expire(f"{key}:info", ttl)
            entry, *_ = await pipe.execute()
        return str(entry)

    async def info(self, stream_id: str) -> StreamInfo | None:
        raw = await self._client().get(f"{self._key(stream_id)}:info")
        if raw is None:
            return None
        meta = json.loads(raw)
        return StreamInfo(meta["session"], meta["kind"])

    async def read(self, stream_id: str, after: str, *, wait: float = 0) -> list[StoredEvent]:
        block = int(wait * 1000) if wait > 0 else None
        read = self._client(blocking=block is not None).xread({self._key(stream_id): after}, block=block)
        # Bounded here, not by the socket: Redis answers a blocking read when ``wait`` is over.
        answer = await asyncio.wait_for(read, wait + settings.REDIS_SOCKET_TIMEOUT) if block is not None else await read
        events = []
        for _, entries in answer or []:
            for entry, fields in entries:
                events.append(StoredEvent(str(entry), fields.get("d", ""), fields.get("f") == "1"))
        return events


def _event_log_make() -> LocalEventLog | RedisEventLog:
    return RedisEventLog(settings.REDIS_URL) if settings.REDIS_URL else LocalEventLog()


# Chosen on first use, by settings; its Redis clients (per event loop, blocking or not) go with it on reset.
event_log: Singleton[LocalEventLog | RedisEventLog] = Singleton("mcp.event_log", _event_log_make)
