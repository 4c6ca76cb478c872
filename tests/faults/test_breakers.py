"""Per-store circuit breakers, and the request-path caches and routing state that skip a store while it is away."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from django.db import OperationalError

from core.breaker import CircuitBreaker, redis_breaker
from observability import metrics
from routing import selectors
from routing.route_state import RedisRouteState
from routing.selectors import DeploymentCache, DeploymentTarget, GroupPolicy

pytestmark = pytest.mark.usefixtures("stores_reset")


def test_an_open_breaker_lets_one_trial_through_per_interval_and_a_success_closes_it(settings):
    settings.STORE_RETRY_INTERVAL = 0.2
    breaker = CircuitBreaker("test-store")
    assert breaker.allow()
    breaker.failure(OSError("no route to host"))
    assert breaker.state == "open" and breaker.describe()["reason"] == "OSError: no route to host"
    assert [breaker.allow() for _ in range(100)] == [False] * 100
    time.sleep(0.21)
    assert [breaker.allow() for _ in range(100)].count(True) == 1
    assert breaker.state == "half-open"
    breaker.failure("still nothing")
    assert not breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.describe() == {"state": "closed"}


def test_the_breakers_state_is_a_gauge_and_each_opening_is_counted():
    before = metrics.STORE_BREAKER_OPENINGS.labels("redis")._value.get()
    redis_breaker.failure(OSError("gone"))
    redis_breaker.failure(OSError("still gone"))  # already open: not another opening
    assert metrics.STORE_BREAKER.labels("redis")._value.get() == 2
    assert metrics.STORE_BREAKER_OPENINGS.labels("redis")._value.get() == before + 1
    redis_breaker.success()
    assert metrics.STORE_BREAKER.labels("redis")._value.get() == 0


@pytest.fixture
def silent_redis():
    """A Redis address that accepts connections and never answers (a black hole)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def target(deployment_id: int) -> DeploymentTarget:
    return DeploymentTarget(
        id=deployment_id,
        model_name="m",
        litellm_model="openai/m",
        provider="openai",
        upstream_model="m",
        api_base="http://127.0.0.1:9",
        api_key="",
        passthrough=False,
        created=0,
    )


async def test_routing_waits_on_a_silent_redis_once_at_most_one_socket_timeout_then_not_at_all(silent_redis, settings):
    settings.REDIS_SOCKET_TIMEOUT = 0.1
    settings.STORE_RETRY_INTERVAL = 10
    state = RedisRouteState(silent_redis)
    targets = [target(1), target(2)]
    timings = []
    for _ in range(20):
        started = time.monotonic()
        views = await state.view(targets)
        timings.append(time.monotonic() - started)
        assert set(views) == {1, 2}
    assert max(timings) < 0.25, timings
    assert sum(timings[1:]) < 0.05, "once the breaker is open, routing pays nothing for Redis"
    assert redis_breaker.state == "open"
    started = time.monotonic()
    assert await state.fail(1, GroupPolicy.default("m")) == 0.0  # counted locally, at once
    assert time.monotonic() - started < 0.01


async def test_in_flight_counts_redis_did_not_take_are_sent_when_it_answers(silent_redis, settings):
    settings.STORE_RETRY_INTERVAL = 10
    state = RedisRouteState(silent_redis)
    redis_breaker.failure(OSError("gone"))
    state.begin(7, tokens=10)
    await state.flush()
    state.end(7, latency_ms=5.0, ttft_ms=None, tokens=0)
    state.begin(7, tokens=10)
    await state.flush()
    assert state._inflight == {7: 1}, "the +1, -1 and +1 are kept and summed, not dropped"


async def test_deployments_past_their_ttl_are_served_at_once_while_one_reload_runs_behind(
    transactional_db, monkeypatch, settings
):
    settings.DEPLOYMENT_CACHE_TTL = 0.05
    loads = []
    release = threading.Event()

    def slow_load():
        loads.append(time.monotonic())
        if len(loads) > 1:
            release.wait(5)  # a database that stopped answering
        return {"m": [target(len(loads))]}, {}

    monkeypatch.setattr(selectors, "_deployments_load_sync", slow_load)
    cache = DeploymentCache()
    assert [t.id for t in (await cache.group("m"))[0]] == [1]
    await asyncio.sleep(0.06)
    started = time.monotonic()
    for _ in range(50):
        assert [t.id for t in (await cache.group("m"))[0]] == [1]
    assert time.monotonic() - started < 0.05
    await asyncio.sleep(0.05)
    assert len(loads) == 2, "one reload in flight, not one per request"
    release.set()
    await asyncio.sleep(0.1)
    assert [t.id for t in (await cache.group("m"))[0]] == [2]


async def test_deployments_never_loaded_are_refused_within_the_read_wait_when_the_database_hangs(
    transactional_db, monkeypatch, settings
):
    from core.errors import ServiceUnavailable

    settings.DB_READ_WAIT = 0.2
    release = threading.Event()

    def hanging_load():
        release.wait(5)
        raise OperationalError("gone")

    monkeypatch.setattr(selectors, "_deployments_load_sync", hanging_load)
    cache = DeploymentCache()
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        await cache.group("m")
    assert 0.15 < time.monotonic() - started < 0.5
    release.set()
