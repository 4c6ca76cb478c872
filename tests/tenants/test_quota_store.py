"""The quota store through faults: one short timeout then a breaker, charges kept through an outage,
concurrency slots as leases (a dead process's free, steady load never lapses), the in-process counters."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from decimal import Decimal

import httpx
import pytest
from django.conf import settings

from core.errors import ServiceUnavailable
from tenants import quota
from tenants.quota import LocalCounters, QuotaExceeded, QuotaRule, RedisCounters, quota_reserve, quota_settle
from tenants.quota import store as quota_store
from tenants.quota.checks import quota_checks
from tenants.quota.scripts import LEASE
from tenants.quota.settlements import SettleBatch, settle_isolating
from tests.live import TcpProxy
from tests.tenants.quota_fixtures import replaced

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis (REDIS_URL)")


def rule(**limits: object) -> QuotaRule:
    return QuotaRule(scope=f"key:{uuid.uuid4().hex[:12]}", label="API key sk-test…", model="", **limits)  # type: ignore[arg-type]


async def reserve(rules: tuple[QuotaRule, ...], cost: str = "0") -> quota.Reservation:
    return await quota_reserve(rules, "gpt-4o-mini", tokens_in=10, tokens_out=10, cost=Decimal(cost))


@pytest.fixture
def silent_store(request, settings):
    """A quota store that accepts connections and never answers (a black-holed Redis)."""
    settings.QUOTA_STORE_TIMEOUT = 0.2
    settings.QUOTA_BREAKER_RETRY = 30.0  # no probe gets an answer here anyway
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.01)
    store = replaced(request, quota.counters, RedisCounters(f"redis://127.0.0.1:{listener.getsockname()[1]}/0"))
    yield store, listener
    listener.close()


def accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except (TimeoutError, BlockingIOError):
            return count
        connection.close()
        count += 1


async def test_an_unanswering_store_costs_one_timeout_then_requests_pass_at_once_without_the_socket(
    silent_store, settings
):
    store, listener = silent_store
    settings.QUOTA_FAIL_MODE = "open"
    rules = (rule(rpm=5, parallel=2),)
    started = time.perf_counter()
    first = await reserve(rules)
    first_s = time.perf_counter() - started
    assert first.unreserved
    assert 0.15 <= first_s < 0.6  # about the timeout, once
    latencies = []
    for _ in range(50):
        started = time.perf_counter()
        assert (await reserve(rules)).unreserved  # admitted past the limits: the store cannot count
        latencies.append(time.perf_counter() - started)
    assert max(latencies) < 0.005
    assert store.breaker.is_open
    assert accepted(listener) == 1  # the first call's connection; none since
    assert quota.quota_store_state()["open"] is True


async def test_fail_closed_refuses_with_503_at_once_while_the_breaker_is_open(silent_store, settings):
    settings.QUOTA_FAIL_MODE = "closed"
    rules = (rule(rpm=5),)
    started = time.perf_counter()
    with pytest.raises(ServiceUnavailable) as first:
        await reserve(rules)
    assert time.perf_counter() - started < 0.6
    assert (first.value.status, first.value.code) == (503, "quota_backend_unavailable")
    started = time.perf_counter()
    for _ in range(50):
        with pytest.raises(ServiceUnavailable):
            await reserve(rules)
    assert time.perf_counter() - started < 0.05


async def test_settlements_wait_while_the_breaker_is_open_without_touching_the_socket(silent_store):
    store, listener = silent_store
    with pytest.raises(TimeoutError):
        await store.settle([("c", "k", 0, 1, 60_000)])
    assert store.breaker.is_open
    started = time.perf_counter()
    unsent, refused = await settle_isolating(store, [("c", "k", 0, 1, 60_000)])
    assert (len(unsent), refused) == (1, [])
    assert time.perf_counter() - started < 0.005
    assert accepted(listener) == 1


def test_in_process_concurrency_count_does_not_lapse_under_steady_load(request, monkeypatch, settings):
    replaced(request, quota.counters, LocalCounters())
    monkeypatch.setattr(quota, "PARALLEL_TTL_MS", 200, raising=False)  # the fixed TTL earlier versions had
    settings.QUOTA_PARALLEL_LEASE = 0.3
    limited = (rule(parallel=1),)

    async def run() -> None:
        await reserve(limited)  # in flight, not settled
        await asyncio.sleep(0.5)
        with pytest.raises(QuotaExceeded):
            await reserve(limited)

    asyncio.run(run())


# --- against a real Redis ---


def redis_proxy() -> tuple[TcpProxy, str]:
    url = httpx.URL(settings.REDIS_URL)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 6379))
    return proxy, str(url.copy_with(host="127.0.0.1", port=proxy.port))


async def redis_value(command: str, *args: object) -> object:
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return await client.execute_command(command, *args)
    finally:
        await client.aclose()


@pytest.fixture
def redis_store(request, monkeypatch, settings):
    if not settings.REDIS_URL:
        pytest.skip("needs a real Redis (REDIS_URL)")
    settings.QUOTA_STORE_TIMEOUT = 0.2
    settings.QUOTA_BREAKER_RETRY = 0.1
    proxy, url = redis_proxy()
    store = replaced(request, quota.counters, RedisCounters(url, caught_up=quota_store.quota_caught_up))
    replaced(request, quota.settle_batch, SettleBatch(quota.counters))
    # The after-outage pass reads the database; these tests are about the counters alone.
    monkeypatch.setattr(quota_store, "after_outage", [])
    yield store, proxy
    proxy.cut()


@needs_redis
async def test_concurrency_slots_held_under_steady_load_do_not_lapse(redis_store, monkeypatch, settings):
    monkeypatch.setattr(quota, "PARALLEL_TTL_MS", 600, raising=False)  # the fixed TTL earlier versions had
    settings.QUOTA_PARALLEL_LEASE = 0.6
    limited = (rule(parallel=2),)
    # Steady load: two requests always in flight, one ending as the next starts, for three leases.
    flight = [await reserve(limited), await reserve(limited)]
    for _ in range(9):
        await asyncio.sleep(0.2)
        ended = flight.pop(0)
        quota_settle(ended, tokens_in=0, tokens_out=0, cost=Decimal(0))
        await quota.settle_batch().flush()
        flight.append(await reserve(limited))
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(limited)
    assert refused.value.code == "max_parallel_requests_exceeded"


@needs_redis
async def test_a_slot_released_while_its_renewal_is_on_the_way_is_not_kept(redis_store, settings):
    settings.QUOTA_PARALLEL_LEASE = 30.0  # a resurrected slot would hold for this long
    limited = (rule(parallel=1),)
    held = await reserve(limited)
    store = quota.counters()
    assert isinstance(store, RedisCounters)
    script = store._script

    async def release_reaching_redis_first(which, keys, args):
        if which is LEASE:  # the slot's request ends, and its release overtakes the renewal
            quota_settle(held, tokens_in=0, tokens_out=0, cost=Decimal(0))
            await quota.settle_batch().flush()
        return await script(which, keys, args)

    store._script = release_reaching_redis_first  # type: ignore[method-assign]
    try:
        await store._renew_leases()
    finally:
        store._script = script  # type: ignore[method-assign]
    await reserve(limited)  # the one slot is free again, not held by the renewal for a lease


@pytest.mark.serial  # a bound on time
@needs_redis
async def test_a_dead_process_slots_free_within_the_lease(redis_store, settings):
    settings.QUOTA_PARALLEL_LEASE = 0.5
    limited = (rule(parallel=1),)
    dead = RedisCounters(settings.REDIS_URL)
    assert (await dead.reserve(quota_checks(limited, "gpt-4o-mini", 1, 1, 0)))[0] == 0
    dead._heartbeat.cancel()  # the process dies: its leases are never renewed, its slot never released
    with pytest.raises(QuotaExceeded):
        await reserve(limited)
    started = time.monotonic()
    while True:
        try:
            await reserve(limited)
            break
        except QuotaExceeded:
            assert time.monotonic() - started < 2.0, "a dead process's slot was not freed"
            await asyncio.sleep(0.05)
    assert time.monotonic() - started <= 0.7


@needs_redis
async def test_a_live_process_keeps_its_slots_past_the_lease_by_renewing_them(redis_store, settings):
    settings.QUOTA_PARALLEL_LEASE = 0.3
    limited = (rule(parallel=1),)
    held = await reserve(limited)
    await asyncio.sleep(1.0)  # three leases
    with pytest.raises(QuotaExceeded):
        await reserve(limited)
    quota_settle(held, tokens_in=0, tokens_out=0, cost=Decimal(0))
    await quota.settle_batch().flush()
    await reserve(limited)


@needs_redis
async def test_what_was_admitted_while_the_store_was_away_is_charged_once_it_answers(redis_store, settings):
    store, proxy = redis_store
    settings.QUOTA_FAIL_MODE = "open"
    settings.QUOTA_PARALLEL_LEASE = 5.0
    limited = (rule(rpm=1000, tpm=100_000, budget_micros=10 * 1_000_000, budget_duration="1d", parallel=10),)
    before = await reserve(limited, cost="0.01")  # reserved normally, settled during the outage
    proxy.blackhole()
    admitted = [await reserve(limited, cost="0.01") for _ in range(5)]
    assert all(reservation.unreserved for reservation in admitted)
    assert store.breaker.is_open
    for reservation in [before, *admitted]:
        quota_settle(reservation, tokens_in=100, tokens_out=20, cost=Decimal("0.002"))
    await asyncio.sleep(0.05)
    proxy.restore()
    budget_check = next(check for check in before.checks if check.kind == "budget")
    requests_check = next(check for check in before.checks if check.kind == "requests")
    tokens_check = next(check for check in before.checks if check.kind == "tokens")
    slots_check = next(check for check in before.checks if check.kind == "parallel")

    async def counted() -> tuple[int, int, int, int]:
        return (
            int(await redis_value("HGET", budget_check.key, "t") or 0),
            int(await redis_value("GET", requests_check.key) or 0),
            int(await redis_value("GET", tokens_check.key) or 0),
            int(await redis_value("ZCARD", slots_check.key)),
        )

    # Six requests, each 120 tokens and $0.002: counted once each, whichever way they were
    # admitted; the one slot taken was released.
    expected = (6 * 2000, 6, 6 * 120, 0)
    deadline = time.monotonic() + 3
    while await counted() != expected:
        assert time.monotonic() < deadline, f"counters {await counted()}, records say {expected}"
        await asyncio.sleep(0.05)
    assert not store.breaker.is_open
    await asyncio.sleep(0.3)  # nothing arrives later to count anything twice
    assert await counted() == expected
