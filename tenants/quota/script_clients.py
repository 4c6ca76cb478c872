"""The client that runs the quota scripts, one per Redis URL and event loop: the lean connection or redis-py's.

``QUOTA_REDIS_CLIENT=lean`` (the default) runs them on the pipelined connection of
``lean_redis``, for a plain ``redis://`` or ``unix://`` URL; ``redis-py`` (and any URL the
lean connection does not take: TLS, extra options) on ``redis.asyncio``. Both answer the same
calls, ``evalsha`` and ``call``, with the same replies.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from redis.exceptions import ResponseError

from core.registry import Singleton
from tenants.quota.lean_redis import RedisReplyError, Script, ScriptConnection, script_connection_for


class RedisPyScripts:
    """redis-py's asyncio client behind the lean connection's calls (no retry, one timeout per call)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    async def call(self, *parts: Any) -> Any:
        async with asyncio.timeout(settings.QUOTA_STORE_TIMEOUT):
            return await self.client.execute_command(*parts)

    async def evalsha(self, script: Script, keys: list[str], args: list[Any], *, deadline: bool = False) -> Any:
        if deadline:
            args = [0, *args]  # redis-py's connection does not learn the server's clock
        async with asyncio.timeout(settings.QUOTA_STORE_TIMEOUT):
            try:
                return await self.client.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[misc]
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            return await self.client.eval(script.source, len(keys), *keys, *args)  # type: ignore[misc]


ScriptClient = ScriptConnection | RedisPyScripts
_Clients = dict[tuple[str, asyncio.AbstractEventLoop], ScriptClient]


def _clients_close(clients: _Clients) -> None:
    for (_, loop), client in clients.items():
        # A closed loop cannot run a transport's close; its sockets go with the connection.
        if isinstance(client, ScriptConnection) and not loop.is_closed():
            client.close()
    clients.clear()


script_clients: Singleton[_Clients] = Singleton("quota.script_clients", dict, close=_clients_close)


def script_client(url: str) -> ScriptClient:
    """This event loop's client for the Redis at ``url``, made on first use."""
    loop = asyncio.get_running_loop()
    clients = script_clients()
    client = clients.get((url, loop))
    if client is None:
        # An event loop that has ended (asgiref makes one per async_to_sync call) leaves its client behind.
        for ended in [key for key in clients if key[1].is_closed()]:
            del clients[ended]
        client = clients[(url, loop)] = _client_make(url)
    return client


def _client_make(url: str) -> ScriptClient:
    timeout = settings.QUOTA_STORE_TIMEOUT
    if settings.QUOTA_REDIS_CLIENT == "lean":
        connection = script_connection_for(url, timeout=timeout)
        if connection is not None:
            return connection
    return RedisPyScripts(url, timeout=timeout)


def store_answered(exc: BaseException) -> bool:
    """True for an error the store answered with (it refused the call), not a failure to reach it."""
    return isinstance(exc, RedisReplyError | ResponseError)
