"""MCP sessions and open-stream counts, kept in Redis (or in process without Redis) so any process can serve them."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

from core.breaker import redis_options
from core.registry import Singleton


def stream_lease() -> float:
    """How long an open stream counts without a heartbeat: a crashed process's streams stop counting after this."""
    return 3 * settings.MCP_SSE_HEARTBEAT + 5


@dataclass(frozen=True, slots=True)
class McpSession:
    id: str
    key_id: int
    tenant_id: int
    version: str
    transport: str  # "streamable_http" or "sse"
    bundle: str = ""
    stream_channel: str = ""  # legacy SSE: the mailbox of the process holding the stream


def session_id_new() -> str:
    return secrets.token_hex(16)


# Expired sessions are swept once the store holds this many, and again at twice what a sweep left.
PRUNE_AT = 100_000


class LocalSessionStore:
    """Sessions of one process (embedded mode: one server process, no Redis)."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[McpSession, float]] = {}
        self._streams: dict[int, set[str]] = {}
        self._prune_at = PRUNE_AT

    async def save(self, session: McpSession) -> None:
        self._sessions[session.id] = (session, time.monotonic() + settings.MCP_SESSION_IDLE_TIMEOUT)
        if len(self._sessions) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        # The next sweep waits until the store has doubled: with every session still live, a sweep
        # per save would cost each new session a walk over all the others.
        now = time.monotonic()
        self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
        self._prune_at = max(PRUNE_AT, 2 * len(self._sessions))

    async def touch(self, session_id: str) -> McpSession | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] <= time.monotonic():
            self._sessions.pop(session_id, None)
            return None
        self._sessions[session_id] = (entry[0], time.monotonic() + settings.MCP_SESSION_IDLE_TIMEOUT)
        return entry[0]

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def stream_open(self, tenant_id: int, stream_id: str) -> bool:
        streams = self._streams.setdefault(tenant_id, set())
        if len(streams) >= settings.MCP_MAX_STREAMS_PER_TENANT:
            return False
        streams.add(stream_id)
        return True

    async def stream_touch(self, tenant_id: int, stream_id: str) -> None:
        """In one process a stream cannot outlive its process, so there is no lease to renew."""

    async def stream_close(self, tenant_id: int, stream_id: str) -> None:
        self._streams.get(tenant_id, set()).discard(stream_id)


# KEYS[1]: the tenant's open streams (a sorted set scored by lease expiry). ARGV: now, expiry,
# limit, stream id. Expired leases (streams of a crashed process) are dropped before counting.
STREAM_OPEN_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000))
return 1
"""


class RedisSessionStore:
    """Sessions in Redis with a sliding idle timeout; shared by every server process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio as redis

            client = redis.Redis.from_url(self.url, **redis_options())
            client.stream_open_script = client.register_script(STREAM_OPEN_LUA)  # type: ignore[attr-defined]
            self._clients[loop] = client
        return client

    @staticmethod
    def _key(session_id: str) -> str:
        return f"{settings.CACHE_KEY_PREFIX}:mcp:session:{session_id}"

    async def save(self, session: McpSession) -> None:
        ttl = max(1, int(settings.MCP_SESSION_IDLE_TIMEOUT))
        await self._client().set(self._key(session.id), json.dumps(asdict(session)), ex=ttl)

    async def touch(self, session_id: str) -> McpSession | None:
        if not session_id.isalnum() or len(session_id) > 64:
            return None
        ttl = max(1, int(settings.MCP_SESSION_IDLE_TIMEOUT))
        raw = await self._client().getex(self._key(session_id), ex=ttl)
        return None if raw is None else McpSession(**json.loads(raw))

    async def delete(self, session_id: str) -> bool:
        return bool(await self._client().delete(self._key(session_id)))

    @staticmethod
    def _streams_key(tenant_id: int) -> str:
        return f"{settings.CACHE_KEY_PREFIX}:mcp:open-streams:{tenant_id}"

    async def stream_open(self, tenant_id: int, stream_id: str) -> bool:
        now = time.time()
        allowed = await self._client().stream_open_script(
            keys=[self._streams_key(tenant_id)],
            args=[now, now + stream_lease(), settings.MCP_MAX_STREAMS_PER_TENANT, stream_id],
        )
        return bool(int(allowed))

    async def stream_touch(self, tenant_id: int, stream_id: str) -> None:
        key = self._streams_key(tenant_id)
        client = self._client()
        await client.zadd(key, {stream_id: time.time() + stream_lease()}, xx=True)
        # Every lease ends within stream_lease() from now, so this never cuts a live one short.
        await client.pexpire(key, int(stream_lease() * 1000))

    async def stream_close(self, tenant_id: int, stream_id: str) -> None:
        await self._client().zrem(self._streams_key(tenant_id), stream_id)


def _session_store_make() -> LocalSessionStore | RedisSessionStore:
    return RedisSessionStore(settings.REDIS_URL) if settings.REDIS_URL else LocalSessionStore()


# Chosen on first use, by settings; its Redis clients (one per event loop) go with it on reset.
session_store: Singleton[LocalSessionStore | RedisSessionStore] = Singleton("mcp.session_store", _session_store_make)
