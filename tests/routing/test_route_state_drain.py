"""At shutdown the drain sends the routing-state changes a process has not yet written to Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings

from core import registry
from routing.route_state import RedisRouteState, route_redis_clients, route_state


class FakePipeline:
    def __init__(self, sent: list[tuple[str, ...]]) -> None:
        self.sent = sent
        self.queued: list[tuple[str, ...]] = []

    def __getattr__(self, command: str):
        return lambda *args: self.queued.append((command, *map(str, args)))

    async def execute(self) -> list[object]:
        self.sent.extend(self.queued)
        return [None] * len(self.queued)


class FakeRedis:
    """Records what each pipeline sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def pipeline(self, transaction: bool) -> FakePipeline:
        return FakePipeline(self.sent)

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def singletons_reset():
    """Forget the backend and close this loop's Redis clients while the loop still runs."""
    yield
    route_state.reset()
    loop = asyncio.get_running_loop()
    for (_, client_loop), client in (route_redis_clients.replace(None) or {}).items():
        if client_loop is loop:
            await client.aclose()


async def test_aflush_all_sends_the_pending_in_flight_usage_and_latency_deltas(singletons_reset):
    url = "redis://routing-state.invalid:6379/0"
    redis = FakeRedis()
    route_redis_clients.replace({(url, asyncio.get_running_loop()): redis})
    state = RedisRouteState(url)
    route_state.replace(state)
    minute = int(time.time() // 60)
    state.begin(7, tokens=10)
    state.end(7, latency_ms=12.5, ttft_ms=None, tokens=5)
    state.begin(7, tokens=3)
    # The batched flush is FLUSH_INTERVAL away: only the drain can have sent these.
    await registry.aflush_all()
    key = f"{settings.CACHE_KEY_PREFIX}:route:7"
    assert ("incrby", f"{key}:inflight", "1") in redis.sent
    assert ("incrby", f"{key}:rpm:{minute}", "2") in redis.sent
    assert ("incrby", f"{key}:tpm:{minute}", "18") in redis.sent
    assert ("lpush", f"{key}:lat", "12.5") in redis.sent
    assert state.round_trips == 1
    await registry.aflush_all()
    assert state.round_trips == 1, "nothing left to send"


@pytest.mark.skipif(not settings.REDIS_URL, reason="shared routing state needs REDIS_URL")
async def test_aflush_all_writes_the_pending_deltas_to_redis(singletons_reset):
    import redis.asyncio as redis

    state = RedisRouteState(settings.REDIS_URL)
    route_state.replace(state)
    deployment_id = int(time.time() * 1000) % 10_000_000 * 10 + 7
    minute = int(time.time() // 60)
    state.begin(deployment_id, tokens=40)
    await registry.aflush_all()
    key = f"{settings.CACHE_KEY_PREFIX}:route:{deployment_id}"
    reader = redis.Redis.from_url(settings.REDIS_URL)
    try:
        values = await reader.mget(f"{key}:inflight", f"{key}:rpm:{minute}", f"{key}:tpm:{minute}")
        await reader.delete(f"{key}:inflight", f"{key}:rpm:{minute}", f"{key}:tpm:{minute}")
    finally:
        await reader.aclose()
    assert values == [b"1", b"1", b"40"]
