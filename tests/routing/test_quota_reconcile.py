"""Budget counters set from the usage records: up to a watermark, once, whatever settlements arrive late."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from decimal import Decimal
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from routing.models import RequestLog
from routing.quota_reconcile import _recorded_micros, quota_reconcile, quota_reconcile_after_outage
from tenants import quota, services
from tenants.models import Quota
from tenants.quota import RedisCounters, budget_key, counter_base, quota_windows
from tests.tenants.quota_fixtures import replaced

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis (REDIS_URL)")


def record(issued, cost: str, at: float, model: str = "gpt-4o-mini") -> None:
    RequestLog.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=dt.datetime.fromtimestamp(at, dt.UTC),
        tenant=issued.key.tenant,
        api_key=issued.key,
        model_requested=model,
        status_code=200,
        cost_usd=Decimal(cost),
    )


def test_records_are_summed_in_micro_dollars_each_truncated_as_its_settlement_was(owner_key):
    now = time.time()
    for cost in ("0.00000199", "0.000001", "0.00012345", "0.3"):
        record(owner_key, cost, now - 5)
    start = dt.datetime.fromtimestamp(now - 60, dt.UTC)
    end = dt.datetime.fromtimestamp(now, dt.UTC)
    spent = _recorded_micros("api_key_id", {owner_key.key.pk}, start, end)
    # 1 + 1 + 123 + 300000, as int(cost * 1e6) per request, not the rounded sum.
    assert spent == {(owner_key.key.pk, "gpt-4o-mini"): 300_125}


@pytest.fixture
def redis_client():
    if not settings.REDIS_URL:
        pytest.skip("needs a real Redis (REDIS_URL)")
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def month_budget(owner_key, redis_client):
    if time.time() - _month_start() < 1800:
        pytest.skip("too close to the start of the month for records half an hour old")
    services.quota_save(quota=Quota(api_key=owner_key.key, max_budget=Decimal("50"), budget_duration="30d"), actor="t")
    window_id, _ = quota_windows(time.time())["30d"]
    key = budget_key(counter_base(settings.CACHE_KEY_PREFIX, f"key:{owner_key.key.pk}", ""), window_id)
    yield key
    redis_client.delete(key)


def _month_start() -> float:
    today = dt.datetime.now(dt.UTC)
    return dt.datetime(today.year, today.month, 1, tzinfo=dt.UTC).timestamp()


def minute(at: float) -> int:
    return int(at // 60)


@needs_redis
def test_a_pass_sets_the_budget_to_the_records_before_the_watermark_and_keeps_the_minutes_after(
    owner_key, month_budget, redis_client
):
    now = time.time()
    old, recent = now - 20 * 60, now - 60
    record(owner_key, "0.25", old)
    record(owner_key, "0.50", old, model="gpt-4o")  # a budget for all models counts every model
    record(owner_key, "1.00", recent)  # after the watermark: its minute in Redis stands for it
    # Redis is wrong before the watermark: a dead process's reservation never settled, and the
    # spend admitted during an outage never charged. After it, a request still in flight.
    redis_client.hset(month_budget, mapping={str(minute(old)): 400_000, str(minute(recent)): 1_200_000, "t": 1_600_000})
    result = quota_reconcile(lag=10 * 60, now=now)
    assert (result.budgets, result.changed) == (1, 1)
    watermark = minute(now - 10 * 60)
    state = {k.decode(): int(v) for k, v in redis_client.hgetall(month_budget).items()}
    assert state == {"w": watermark, "r": 750_000, str(minute(recent)): 1_200_000, "t": 1_950_000}
    assert 0 < redis_client.pttl(month_budget)


@needs_redis
def test_a_settlement_that_arrives_after_the_pass_is_not_counted_twice(owner_key, month_budget, redis_client):
    now = time.time()
    old, recent = now - 20 * 60, now - 60
    record(owner_key, "0.25", old)
    redis_client.hset(month_budget, mapping={str(minute(recent)): 300_000, "t": 300_000})
    quota_reconcile(lag=10 * 60, now=now)
    assert int(redis_client.hget(month_budget, "t")) == 550_000

    async def late() -> list[int]:
        # Kept through an outage: the old request's charge (the records have it already) and a
        # recent one's refund (its minute is still counted from Redis).
        return await RedisCounters(settings.REDIS_URL).settle(
            [("b", month_budget, minute(old), 250_000, 60_000), ("b", month_budget, minute(recent), -100_000, 60_000)]
        )

    assert asyncio.run(late()) == []
    assert int(redis_client.hget(month_budget, "t")) == 450_000
    # A second pass changes nothing: the value is the records' once.
    assert quota_reconcile(lag=10 * 60, now=now).changed == 0


@needs_redis
def test_a_redis_that_lost_its_data_gets_the_records_back(owner_key, month_budget, redis_client):
    now = time.time()
    record(owner_key, "2.5", now - 30 * 60)
    record(owner_key, "0.5", now - 90)
    out = StringIO()
    call_command("quota_reconcile", "--lag", "0", stdout=out)
    assert int(redis_client.hget(month_budget, "t")) == 3_000_000
    assert "1 budget counters set from the usage records" in out.getvalue()
    assert "+3.000000 USD" in out.getvalue()


@needs_redis
def test_a_window_older_than_the_kept_records_is_left_as_it_is(owner_key, month_budget, redis_client, settings):
    settings.USAGE_RETENTION_DAYS = 1  # the month's first records are pruned: their sum would undercount
    redis_client.hset(month_budget, mapping={"t": 5_000_000})
    later_this_month = max(time.time(), _month_start() + 3 * 86400)
    result = quota_reconcile(lag=0, now=later_this_month)
    assert (result.budgets, result.skipped) == (0, 1)
    assert int(redis_client.hget(month_budget, "t")) == 5_000_000
    assert "left as they are" in result.summary()


@needs_redis
def test_after_an_outage_one_process_of_many_reconciles(owner_key, month_budget, redis_client):
    redis_client.delete(f"{settings.CACHE_KEY_PREFIX}:q:reconcile-lock")
    first, second = quota_reconcile_after_outage(), quota_reconcile_after_outage()
    assert first is not None and first.budgets == 1
    assert second is None  # the others find the pass taken
    redis_client.delete(f"{settings.CACHE_KEY_PREFIX}:q:reconcile-lock")


def test_without_redis_the_command_says_there_is_nothing_to_reconcile(settings, request):
    settings.REDIS_URL = settings.QUOTA_REDIS_URL = ""
    replaced(request, quota.counters, quota.LocalCounters())
    out = StringIO()
    call_command("quota_reconcile", stdout=out)
    assert "kept in process" in out.getvalue()


def test_the_quota_store_reconciles_from_the_records_once_it_answers_after_an_outage():
    assert quota_reconcile_after_outage in quota.after_outage
