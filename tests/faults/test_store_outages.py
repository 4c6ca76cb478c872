"""Redis or PostgreSQL black-holed under load: cached keys keep their latency, unseen keys get 503 in a second,
a key changed just before costs no other key, and all is back within seconds of the store's return."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenants import services
from tests import live
from tests.faults.load import Load, failures, p99, wait_until
from tests.faults.stores import Stores

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

NORMAL_S = 3.0
OUTAGE_S = 10.0
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def servers(stores: Stores, session_tmp) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(live.daphne_server(session_tmp, **stores.env)).url for _ in range(2)]


def chat(url: str, secret: str, timeout: float = 30) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{url}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {secret}"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        return 0, time.monotonic() - started, {"error": {"code": repr(exc)}}
    return response.status_code, time.monotonic() - started, response.json()


def ready(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{url}/readyz", timeout=10)
    return response.status_code, response.json()


def store_state(url: str, store: str) -> str:
    return ready(url)[1].get("stores", {}).get(store, {}).get("state", "?")


def summary(name: str, normal, outage, after) -> str:
    slow = [f"{s.at:.2f}s:{s.seconds * 1000:.0f}ms@{s.server}" for s in outage if s.seconds > p99(normal) + 0.05]
    return (
        f"slow during the outage: {slow}\n"
        f"{name}: normal p99 {p99(normal) * 1000:.0f} ms ({len(normal)} requests), "
        f"outage p99 {p99(outage) * 1000:.0f} ms ({len(outage)}), after p99 {p99(after) * 1000:.0f} ms ({len(after)})"
    )


def test_a_redis_black_hole_costs_cached_keys_nothing_and_recovers_within_seconds(
    stores, servers, owner, key_factory, deployment_factory, capsys
):
    deployment_factory()
    secrets = [key_factory(owner, f"steady {n}").secret for n in range(4)]
    for url in servers:
        for secret in secrets:
            assert chat(url, secret)[0] == 200
    load = Load(servers, secrets, "gpt-4o-mini").start()
    try:
        time.sleep(0.5)
        t0 = load.mark()
        time.sleep(NORMAL_S)
        t1 = load.mark()
        stores.redis.blackhole()
        time.sleep(OUTAGE_S / 2)
        during = [ready(url) for url in servers]
        time.sleep(OUTAGE_S / 2)
        t2 = load.mark()
        stores.redis.restore()
        recovery = wait_until(lambda: all(store_state(url, "redis") == "ok" for url in servers), 10)
        t3 = load.mark()
        time.sleep(2)
        t4 = load.mark()
    finally:
        stores.redis.restore()
        load.stop()
    normal, outage, after = load.window(t0, t1), load.window(t1, t2), load.window(t3, t4)
    with capsys.disabled():
        print(f"\n{summary('redis black hole', normal, outage, after)}; recovered in {recovery:.2f} s")
    assert not failures(normal + outage + after), failures(normal + outage + after)[:3]
    assert p99(outage) <= p99(normal) + 0.1
    assert p99(after) <= p99(normal) + 0.1
    assert recovery < 3
    for status, report in during:
        assert status == 200, report
        assert report["status"] == "degraded" and report["stores"]["redis"]["state"] == "degraded"
        assert report["stores"]["redis"]["since"] and report["stores"]["database"]["state"] == "ok"


def test_a_database_black_hole_serves_cached_keys_and_refuses_unseen_ones_within_a_second(
    stores, servers, owner, key_factory, deployment_factory, capsys
):
    deployment_factory()
    secrets = [key_factory(owner, f"steady {n}").secret for n in range(4)]
    changed = key_factory(owner, "changed just before")
    unseen = [key_factory(owner, f"unseen {n}").secret for n in range(2)]
    for url in servers:
        for secret in [*secrets, changed.secret]:
            assert chat(url, secret)[0] == 200
    load = Load(servers, secrets, "gpt-4o-mini").start()
    try:
        time.sleep(0.5)
        t0 = load.mark()
        time.sleep(NORMAL_S)
        t1 = load.mark()
        # An admin edit just before the outage: the servers drop that key, and only that key.
        changed.key.name = "renamed"
        services.api_key_update(api_key=changed.key, actor="test")
        time.sleep(0.6)  # a few polls of the shared epoch
        stores.database.blackhole()
        time.sleep(2)
        refusals = [chat(url, secret, timeout=10) for url, secret in zip(servers, unseen, strict=True)]
        changed_refusal = chat(servers[0], changed.secret, timeout=10)
        during = [ready(url) for url in servers]
        time.sleep(max(0.0, OUTAGE_S - 2 - sum(took for _, took, _ in refusals) - changed_refusal[1]))
        t2 = load.mark()
        stores.database.restore()
        recovery = wait_until(lambda: all(chat(url, unseen[0])[0] == 200 for url in servers), 10, step=0.1)
        t3 = load.mark()
        time.sleep(2)
        t4 = load.mark()
    finally:
        stores.database.restore()
        load.stop()
    normal, outage, after = load.window(t0, t1), load.window(t1, t2), load.window(t3, t4)
    with capsys.disabled():
        print(
            f"\n{summary('database black hole', normal, outage, after)}; unseen keys refused in "
            f"{', '.join(f'{took * 1000:.0f} ms' for _, took, _ in refusals)}; recovered in {recovery:.2f} s"
        )
    assert not failures(normal + outage + after), failures(normal + outage + after)[:3]
    assert p99(outage) <= p99(normal) + 0.1
    assert p99(after) <= p99(normal) + 0.1
    for status, took, body in [*refusals, changed_refusal]:
        assert status == 503 and body["error"]["code"] == "auth_backend_unavailable", body
        assert took < 1.5
    assert recovery < 4
    for status, report in during:
        assert status == 200, report
        database = report["stores"]["database"]
        assert report["status"] == "degraded" and database["state"] == "degraded" and database["since"]


def test_a_dead_pooled_database_connection_is_replaced_without_a_503(
    stores, servers, owner, key_factory, deployment_factory
):
    deployment_factory()
    warm = key_factory(owner, "warm").secret
    for url in servers:
        assert chat(url, warm)[0] == 200  # the servers now hold pooled connections through the proxy
    fresh = [key_factory(owner, f"fresh {n}").secret for n in range(3)]
    stores.database.drop_connections()  # PostgreSQL stays up; every open connection to it is broken
    statuses = [chat(url, secret)[0] for secret in fresh for url in servers]
    assert statuses == [200] * len(statuses)
