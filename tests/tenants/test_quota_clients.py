"""The quota scripts give the same answers through the lean connection and through redis-py's asyncio client."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.conf import settings

from tenants import quota
from tenants.quota import QuotaExceeded, QuotaRule, RedisCounters, SettleBatch, quota_reserve, quota_settle
from tenants.quota.lean_redis import ScriptConnection
from tenants.quota.script_clients import RedisPyScripts, script_client
from tests.tenants.quota_fixtures import replaced

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis (REDIS_URL)")

CLIENTS = {"lean": ScriptConnection, "redis-py": RedisPyScripts}


@pytest.fixture(params=sorted(CLIENTS))
def client(request, settings) -> str:
    """The quota counters on the real Redis, their scripts run by one client or the other."""
    settings.QUOTA_REDIS_CLIENT = request.param
    replaced(request, quota.counters, RedisCounters(settings.REDIS_URL))
    replaced(request, quota.settle_batch, SettleBatch(quota.counters))
    return request.param


def rule(**limits: object) -> QuotaRule:
    return QuotaRule(scope=f"key:{uuid.uuid4().hex[:12]}", label="API key sk-test…", model="", **limits)  # type: ignore[arg-type]


async def reserve(rules: tuple[QuotaRule, ...], tokens: int = 10, cost: str = "0") -> quota.Reservation:
    return await quota_reserve(rules, "gpt-4o-mini", tokens_in=tokens, tokens_out=0, cost=Decimal(cost))


async def settle(reservation: quota.Reservation, tokens: int, cost: str = "0") -> None:
    quota_settle(reservation, tokens_in=tokens, tokens_out=0, cost=Decimal(cost))
    await quota.settle_batch().flush()


async def used(rules: tuple[QuotaRule, ...]) -> dict[str, float]:
    return {gauge.kind: gauge.used for gauge in await quota.quota_usage(list(rules))}


async def test_the_chosen_client_runs_the_scripts(client):
    await reserve((rule(rpm=5),))
    assert isinstance(script_client(settings.REDIS_URL), CLIENTS[client])


async def test_a_reservation_counts_on_every_limit_and_says_what_is_left(client):
    limited = (rule(rpm=5, tpm=100, parallel=3, budget_micros=1_000_000, budget_duration="1d"),)
    reservation = await reserve(limited, tokens=30, cost="0.25")
    assert reservation.values == [1, 30, 1, 250_000]
    headers = dict(reservation.headers())
    assert (headers[b"x-ratelimit-remaining-requests"], headers[b"x-ratelimit-remaining-tokens"]) == (b"4", b"70")
    assert await used(limited) == {"requests": 1, "tokens": 30, "parallel": 1, "budget": 0.25}


async def test_at_the_limit_a_request_is_refused_and_counts_nowhere(client):
    limited = (rule(rpm=10, tpm=50),)
    await reserve(limited, tokens=40)
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(limited, tokens=20)
    assert (refused.value.code, refused.value.type) == ("tpm_limit_exceeded", "tokens")
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "10"
    assert await used(limited) == {"requests": 1, "tokens": 40}  # the refused request's rpm was undone


async def test_settling_replaces_the_reservation_with_what_was_used(client):
    limited = (rule(tpm=1000, budget_micros=5_000_000, budget_duration="30d"),)
    reservation = await reserve(limited, tokens=100, cost="0.5")
    await settle(reservation, tokens=40, cost="0.125")
    assert await used(limited) == {"tokens": 40, "budget": 0.125}


async def test_a_settled_request_releases_its_concurrency_slot(client):
    limited = (rule(parallel=1),)
    held = await reserve(limited)
    with pytest.raises(QuotaExceeded) as refused:
        await reserve(limited)
    assert refused.value.code == "max_parallel_requests_exceeded"
    await settle(held, tokens=10)
    assert await used(limited) == {"parallel": 0}
    await reserve(limited)
