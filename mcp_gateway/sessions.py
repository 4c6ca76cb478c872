"""MCP sessions and open-stream counts, kept in Redis (or in process without Redis) so any process can serve them."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

STREAM_COUNT_TTL = 24 * 3600  # a crashed process's stream count heals after this


@dataclass(frozen=True, slots=True)
class McpSession:
    id: str
    key_id: int
    tenant_id: int
    version: str
    transport: str  # "streamable_http" or "sse"
    bundle: str = ""


def session_id_new() -> str:
    return secrets.token_hex(16)


class LocalSessionStore:
    """Sessions of one process (embedded mode: one server process, no Redis)."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[McpSession, float]] = {}
        self._streams: dict[int, int] = {}

    async def save(self, session: McpSession) -> None:
        self._sessions[session.id] = (session, time.monotonic() + settings.MCP_SESSION_IDLE_TIMEOUT)
        if len(self._sessions) > 100_000:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}

    async def touch(self, session_id: str) -> McpSession | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] <= time.monotonic():
            self._sessions.pop(session_id, None)
            return None
        self._sessions[session_id] = (entry[0], time.monotonic() + settings.MCP_SESSION_IDLE_TIMEOUT)
        return entry[0]

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def stream_open(self, tenant_id: int) -> bool:
        count = self._streams.get(tenant_id, 0)
        if count >= settings.MCP_MAX_STREAMS_PER_TENANT:
            return False
        self._streams[tenant_id] = count + 1
        return True

    async def stream_close(self, tenant_id: int) -> None:
        self._streams[tenant_id] = max(0, self._streams.get(tenant_id, 0) - 1)


STREAM_OPEN_LUA = """
local value = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if value > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
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

            client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            client.stream_open_script = client.register_script(STREAM_OPEN_LUA)
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

    async def stream_open(self, tenant_id: int) -> bool:
        key = f"{settings.CACHE_KEY_PREFIX}:mcp:streams:{tenant_id}"
        allowed = await self._client().stream_open_script(
            keys=[key], args=[settings.MCP_MAX_STREAMS_PER_TENANT, STREAM_COUNT_TTL]
        )
        return bool(int(allowed))

    async def stream_close(self, tenant_id: int) -> None:
        key = f"{settings.CACHE_KEY_PREFIX}:mcp:streams:{tenant_id}"
        client = self._client()
        if int(await client.decr(key)) < 0:
            await client.set(key, 0, keepttl=True)


_store: LocalSessionStore | RedisSessionStore | None = None


def session_store() -> LocalSessionStore | RedisSessionStore:
    global _store
    if _store is None:
        _store = RedisSessionStore(settings.REDIS_URL) if settings.REDIS_URL else LocalSessionStore()
    return _store
