"""Quota settlements: a counter Redis refuses is set aside alone, an unreachable Redis loses nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from core import registry
from observability import metrics
from tenants import quota
from tenants.quota import RedisCounters, SettleBatch
from tenants.quota import settlements as quota_settlements
from tenants.quota.checks import Adjustment
from tenants.quota.lean_redis import RedisReplyError
from tenants.quota.scripts import COUNTER
from tenants.quota.settlements import Pending
from tests.tenants.quota_fixtures import replaced


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


def letters(var_dir: Path) -> list[dict]:
    path = var_dir / "dead-letter" / "settlements.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Store:
    """A counter store that refuses some keys (as Redis does a key of another type) or is unreachable."""

    def __init__(self, refused: set[str] = frozenset(), *, whole_call: bool = False) -> None:  # type: ignore[assignment]
        self.values: dict[str, int] = {}
        self.refused = set(refused)
        self.whole_call = whole_call  # refuse the call as a whole, as a script error would
        self.down = False
        self.calls = 0

    async def settle(self, adjustments: list[Adjustment]) -> list[int]:
        self.calls += 1
        if self.down:
            raise ConnectionError("Redis connection lost")
        refused = [position for position, (_, key, _, _, _) in enumerate(adjustments, start=1) if key in self.refused]
        if refused and self.whole_call:
            raise RedisReplyError("ERR value is not an integer or out of range")
        for position, (_, key, _, delta, _) in enumerate(adjustments, start=1):
            if position not in refused:
                self.values[key] = max(0, self.values.get(key, 0) + delta)
        return refused


def pending(key: str, delta: int, ttl_ms: int) -> Pending:
    """A window counter's settlement as the batch takes it: its end in epoch seconds, not a TTL."""
    return (COUNTER, key, 0, delta, time.time() + ttl_ms / 1000)


@pytest.fixture
def store(request) -> Store:
    return replaced(request, quota.counters, Store())  # type: ignore[arg-type]


@pytest.mark.parametrize("whole_call", [False, True], ids=["per-counter", "whole-call"])
async def test_a_counter_the_store_refuses_is_set_aside_and_the_others_are_settled(store, var_dir, whole_call):
    store.refused, store.whole_call = {"bad"}, whole_call
    before = metrics.REGISTRY.get_sample_value("llmp_writer_dead_letters_total", {"writer": "settlements"}) or 0
    batch = SettleBatch(quota.counters)
    batch.add([pending("a", -1, 60_000), pending("bad", -1, 60_000), pending("b", 5, 60_000)])
    await batch.flush()
    assert store.values == {"a": 0, "b": 5}
    [row] = [letter["row"] for letter in letters(var_dir)]
    assert (row[0], row[1], row[3], row[4]) == ("bad", -1, "c", 0)
    assert 59_000 < row[2] <= 60_000
    after = metrics.REGISTRY.get_sample_value("llmp_writer_dead_letters_total", {"writer": "settlements"})
    assert after == before + 1


async def test_settlements_are_kept_while_the_store_is_unreachable_and_sent_when_it_is_back(store, monkeypatch):
    monkeypatch.setattr(quota_settlements, "SETTLE_RETRY_INTERVAL", 0.05)
    store.values = {"parallel": 3}
    store.down = True
    batch = SettleBatch(quota.counters)
    batch.add([pending("parallel", -1, 60_000)])
    await batch.flush()
    batch.add([pending("parallel", -1, 60_000)])  # another request ends meanwhile: added to the kept one
    assert [(key, entry[0]) for key, entry in batch._pending.items()] == [(("c", "parallel", 0), -2)]
    store.down = False
    await asyncio.sleep(0.2)  # the retry scheduled by the failed flush
    assert store.values == {"parallel": 1}
    assert batch._pending == {}


async def test_the_registry_drain_sends_the_settlements_still_waiting_as_quota_settle_flush_does(store, request):
    [entry] = [entry for entry in registry.entries() if entry.name == "settlements"]
    assert entry.aflush is not None  # flushed on the event loop, before it stops
    for drain in (entry.aflush, quota.quota_settle_flush):
        batch = replaced(request, quota.settle_batch, SettleBatch(quota.counters))
        batch.add([pending("a", 3, 60_000)])
        await drain()
        assert (store.values, batch.pending) == ({"a": 3}, 0)
        store.values = {}


async def test_kept_settlements_are_bounded(store):
    store.down = True
    batch = SettleBatch(quota.counters)
    batch.MAX_PENDING = 2
    batch.add([pending("a", 1, 1000), pending("b", 1, 1000), pending("c", 1, 1000)])
    assert sorted(key for _, key, _ in batch._pending) == ["a", "b"]


def test_replay_settles_what_redis_now_takes_and_drops_what_has_expired(store, var_dir):
    store.refused = {"still-bad", "fixed"}
    batch = SettleBatch(quota.counters)

    async def first() -> None:
        batch.add([pending("fixed", -1, 600_000), pending("still-bad", -1, 600_000), pending("old", -1, 5)])
        store.refused.add("old")
        await batch.flush()

    asyncio.run(first())
    time.sleep(0.01)  # "old" has ended by now
    assert len(letters(var_dir)) == 3
    store.refused = {"still-bad"}
    result = batch.replay()
    assert (result.records, result.written, result.refused, result.expired) == (3, 1, 1, 1)
    assert store.values == {"fixed": 0}
    assert [(letter["row"][0], letter["attempts"]) for letter in letters(var_dir)] == [("still-bad", 2)]


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (REDIS_URL)")
async def test_against_redis_a_key_of_another_type_holds_no_other_counter_back():
    import redis.asyncio as redis

    prefix = f"{settings.CACHE_KEY_PREFIX}:settle-test:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        await client.set(f"{prefix}:a", 5)
        await client.set(f"{prefix}:text", "not a number")
        await client.hset(f"{prefix}:hash", "field", 1)
        counters = RedisCounters(settings.REDIS_URL)
        refused = await counters.settle(
            [
                ("c", f"{prefix}:text", 0, 1, 60_000),
                ("c", f"{prefix}:a", 0, -2, 60_000),
                ("c", f"{prefix}:hash", 0, 1, 60_000),
            ]
        )
        assert refused == [1, 3]
        assert int(await client.get(f"{prefix}:a")) == 3
        assert 0 < await client.pttl(f"{prefix}:a") <= 60_000  # a counter without a TTL gets one
    finally:
        await client.delete(f"{prefix}:a", f"{prefix}:text", f"{prefix}:hash")
        await client.aclose()


def test_without_redis_a_replay_keeps_the_dead_letters(store, request, var_dir):
    store.refused = {"k"}
    batch = SettleBatch(quota.counters)

    async def first() -> None:
        batch.add([pending("k", -1, 600_000)])
        await batch.flush()

    asyncio.run(first())
    replaced(request, quota.counters, quota.LocalCounters())  # a command run without REDIS_URL
    result = batch.replay()
    assert (result.records, result.kept, result.written) == (1, 1, 0)
    assert len(letters(var_dir)) == 1
