"""Quotas while their Redis is black-holed or cut, with live servers: latency bounds, 503s within a
second, recovery within seconds, budgets that end where the records say, a killed process's slots."""

from __future__ import annotations

import datetime as dt
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Floor

from routing.models import RequestLog
from tenants import services
from tenants.models import Quota
from tenants.quota import budget_key, counter_base, quota_windows
from tests import live

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not settings.REDIS_URL, reason="quota counters are in Redis only with REDIS_URL"),
]

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
RETRY = 0.5  # QUOTA_BREAKER_RETRY of the servers under test


class ReopenableProxy(live.TcpProxy):
    """The tests' proxy, which can listen again on its port after a cut (Redis back on the same address)."""

    def reopen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ReopenableProxy]:
    url = httpx.URL(settings.REDIS_URL)
    proxy = ReopenableProxy((url.host or "127.0.0.1", url.port or 6379))
    yield proxy
    proxy.cut()


def proxied(proxy: live.TcpProxy) -> str:
    return str(httpx.URL(settings.REDIS_URL).copy_with(host="127.0.0.1", port=proxy.port))


@pytest.fixture(scope="module")
def servers(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory, proxy: ReopenableProxy
) -> Iterator[dict[str, live.Server]]:
    """Two servers whose quota store (only) goes through the proxy: one admits, one refuses, when it is away."""
    tmp = tmp_path_factory.mktemp("quota-outage")
    common = {"QUOTA_REDIS_URL": proxied(proxy), "QUOTA_BREAKER_RETRY": str(RETRY), "QUOTA_PARALLEL_LEASE": "3"}
    with (
        live.daphne_server(tmp, QUOTA_FAIL_MODE="open", **common) as admitting,
        live.daphne_server(tmp, QUOTA_FAIL_MODE="closed", **common) as refusing,
    ):
        yield {"open": admitting, "closed": refusing}


@pytest.fixture
def healed(proxy: ReopenableProxy) -> Iterator[ReopenableProxy]:
    """Whatever a test did to the proxy, the next one finds it forwarding."""
    yield proxy
    proxy.restore()
    try:
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    except OSError:
        proxy.reopen()
    time.sleep(RETRY * 2)  # the servers' breakers close


def post(server: live.Server, secret: str, body: dict | None = None) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=body or BODY,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    return response, time.perf_counter() - started


def recovery(server: live.Server, secret: str, *, ready: str, limit: float = 5.0) -> tuple[float, int]:
    """Seconds until a request shows the quota store is counting again (``ready``: a header to
    see), and how many requests that took."""
    started = time.monotonic()
    attempts = 0
    while True:
        response, _ = post(server, secret)
        attempts += 1
        if response.status_code == 200 and ready in response.headers:
            return time.monotonic() - started, attempts
        assert time.monotonic() - started < limit, f"not recovered after {limit}s: {response.status_code}"
        time.sleep(0.05)


def recorded_micros(key_id: int) -> int:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    logs = RequestLog.objects.filter(api_key_id=key_id, created_at__gte=today)
    return int(logs.aggregate(spent=Sum(Floor(F("cost_usd") * 1_000_000 + Decimal("0.000001"))))["spent"] or 0)


def budget_total(key_id: int) -> int:
    import redis

    window_id, _ = quota_windows(time.time())["1d"]
    key = budget_key(counter_base(settings.CACHE_KEY_PREFIX, f"key:{key_id}", ""), window_id)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(client.hget(key, "t") or 0)
    finally:
        client.close()


def test_black_holed_quota_store_fail_open_costs_one_timeout_recovers_and_charges_the_outage(
    servers, healed, deployment_factory, owner, key_factory
):
    deployment_factory()
    issued = key_factory(owner, "outage")
    services.quota_save(
        quota=Quota(api_key=issued.key, rpm_limit=100_000, max_budget=Decimal("100"), budget_duration="1d"),
        actor="test",
    )
    server = servers["open"]
    for _ in range(5):  # warm: connections, caches, the scripts loaded
        post(server, issued.secret)
    normal = []
    for _ in range(30):
        response, seconds = post(server, issued.secret)
        assert response.status_code == 200 and "x-ratelimit-limit-requests" in response.headers
        normal.append(seconds)

    healed.blackhole()
    during = []
    for _ in range(60):
        response, seconds = post(server, issued.secret)
        assert response.status_code == 200  # admitted: QUOTA_FAIL_MODE=open
        during.append(seconds)
    baseline = statistics.median(normal)
    bound = statistics.quantiles(normal, n=20)[-1] + 0.1  # the normal p95 plus 100 ms
    slow = [seconds for seconds in during if seconds > bound]
    # One request waits for the store's timeout (0.25 s); every other one passes at once.
    assert len(slow) <= 1, f"{len(slow)} requests over {bound:.3f}s: {sorted(during)[-3:]}"
    assert max(during) < 0.25 + 0.5
    assert statistics.median(during) < baseline + 0.02
    print(
        f"fail-open black hole: baseline p50 {baseline * 1000:.1f} ms; during p50 "
        f"{statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.0f} ms, over +100 ms: {len(slow)}"
    )

    healed.restore()
    recovered, attempts = recovery(server, issued.secret, ready="x-ratelimit-limit-requests")
    assert recovered < RETRY + 1.5
    print(f"fail-open black hole: counting again {recovered:.2f}s after the restore")

    # Every request's record written; the budget counter holds exactly their spend, the 60
    # admitted during the outage included (charged once the store answered again).
    deadline = time.monotonic() + 10
    while RequestLog.objects.filter(api_key_id=issued.key.pk).count() < 5 + 30 + 60 + attempts:
        assert time.monotonic() < deadline, "usage records not written"
        time.sleep(0.05)
    recorded = recorded_micros(issued.key.pk)
    assert recorded > 0
    while budget_total(issued.key.pk) != recorded:
        assert time.monotonic() < deadline, f"budget counter {budget_total(issued.key.pk)}, records {recorded}"
        time.sleep(0.05)


@pytest.mark.parametrize("fault", ["blackhole", "cut"])
def test_fail_closed_refuses_within_a_second_then_at_once_and_recovers(
    servers, healed, deployment_factory, owner, key_factory, fault
):
    deployment_factory()
    issued = key_factory(owner, f"closed-{fault}")
    services.quota_save(quota=Quota(api_key=issued.key, rpm_limit=100_000), actor="test")
    server = servers["closed"]
    normal = []
    for _ in range(10):
        response, seconds = post(server, issued.secret)
        assert response.status_code == 200
        normal.append(seconds)

    healed.blackhole() if fault == "blackhole" else healed.cut()
    refusals = [post(server, issued.secret) for _ in range(20)]
    for response, _ in refusals:
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "quota_backend_unavailable"
    first, rest = refusals[0][1], [seconds for _, seconds in refusals[1:]]
    assert first < 1.0
    # The breaker is open: no socket, no wait. Each is under one store timeout (0.25 s), and
    # they take what a normal request takes.
    assert max(rest) < 0.25, sorted(rest)[-3:]
    assert statistics.median(rest) < statistics.median(normal) + 0.05
    print(
        f"fail-closed {fault}: first 503 after {first * 1000:.0f} ms, then median {statistics.median(rest) * 1000:.1f} "
        f"ms, max {max(rest) * 1000:.1f} ms (normal median {statistics.median(normal) * 1000:.1f} ms)"
    )

    healed.restore() if fault == "blackhole" else healed.reopen()
    recovered = recovery(server, issued.secret, ready="x-ratelimit-limit-requests")[0]
    assert recovered < RETRY + 1.5
    print(f"fail-closed {fault}: serving again {recovered:.2f}s after the store's return")


def test_a_killed_server_process_frees_its_concurrency_slots_within_the_lease(
    servers, healed, deployment_factory, owner, key_factory, tmp_path
):
    deployment_factory()
    issued = key_factory(owner, "killed")
    services.quota_save(quota=Quota(api_key=issued.key, max_parallel_requests=1), actor="test")
    lease = 2.0
    stream_body = {**BODY, "stream": True, "messages": [{"role": "user", "content": "[[fake chunks=400 gap_ms=50]]"}]}
    with live.daphne_server(tmp_path, QUOTA_PARALLEL_LEASE=str(lease)) as doomed:
        with httpx.stream(
            "POST",
            f"{doomed.url}/v1/chat/completions",
            json=stream_body,
            headers={"Authorization": f"Bearer {issued.secret}"},
            timeout=10,
        ) as stream:
            chunks = stream.iter_bytes()  # kept: a dropped iterator would close the stream
            next(chunks)  # the stream runs: its slot is held
            refused, _ = post(servers["open"], issued.secret)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "max_parallel_requests_exceeded"
            doomed.process.kill()  # SIGKILL: nothing released, nothing renewed
            doomed.process.wait()
            killed = time.monotonic()
    still_held, _ = post(servers["open"], issued.secret)
    assert still_held.status_code == 429  # not freed by the socket closing: by the lease running out
    while True:
        response, _ = post(servers["open"], issued.secret)
        if response.status_code == 200:
            break
        assert time.monotonic() - killed < lease + 3, "the dead process's slot was not freed"
        time.sleep(0.05)
    freed = time.monotonic() - killed
    assert freed <= lease + 1.0
    print(f"kill -9: the slot freed {freed:.2f}s after the kill (lease {lease}s)")
