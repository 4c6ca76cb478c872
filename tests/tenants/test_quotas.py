"""Quotas enforced on the live API: 429s that say which limit, OpenAI's rate-limit headers,
tenant and key limits together, concurrency, budgets, and the Redis-down policy."""

from __future__ import annotations

import concurrent.futures
import time
from decimal import Decimal

import httpx
import openai
import pytest
from django.conf import settings

from audit.models import AuditEvent
from tenants import services
from tenants.models import Quota
from tests import live
from tests.request_logs import wait_for_log

HELLO = [{"role": "user", "content": "hello"}]


def away_from_a_minute_boundary() -> None:
    """Per-minute windows are aligned to the clock: keep a test's requests inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def quota(**fields):
    return services.quota_save(quota=Quota(**fields), actor="test")


def sdk(server, secret):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)


@pytest.fixture
def deployed(deployment_factory):
    deployment_factory()
    deployment_factory("gpt-4o", "openai/gpt-4o")


def test_key_rpm_limit_admits_exactly_the_limit_then_429_with_headers(server, deployed, owner, key_factory):
    issued = key_factory(owner, "limited")
    quota(api_key=issued.key, rpm_limit=3)
    away_from_a_minute_boundary()
    client = sdk(server, issued.secret)
    remaining = []
    for _ in range(3):
        response = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    error = refused.value
    assert error.status_code == 429
    assert (error.body["type"], error.body["code"]) == ("requests", "rpm_limit_exceeded")
    assert "API key" in error.body["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= 61
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    log = wait_for_log(request_id=error.response.headers["x-request-id"])
    assert log.status_code == 429 and log.error_type == "rpm_limit_exceeded"
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="quota.refused", tenant_id=owner.pk).exists():
        assert time.monotonic() < deadline, "quota refusal not audited"
        time.sleep(0.05)


def test_a_key_hammering_its_limit_adds_counts_not_a_row_per_refusal(server, deployed, owner, key_factory):
    issued = key_factory(owner, "hammer")
    quota(api_key=issued.key, rpm_limit=1)
    away_from_a_minute_boundary()
    client = sdk(server, issued.secret)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    for _ in range(100):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="quota.refused", tenant_id=owner.pk).exists():
        assert time.monotonic() < deadline, "quota refusal not audited"
        time.sleep(0.05)
    time.sleep(1)  # several flush intervals of the server's writer
    # The first refusal is written as it happened; the other 99 wait as one count for the interval's end.
    # The server is shared with earlier tests, so its interval may have begun before this test and
    # ended during it: then the count so far is written too, and a later refusal opens a new one.
    events = list(AuditEvent.objects.filter(action="quota.refused", tenant_id=owner.pk))
    as_happened = [event for event in events if "count" not in event.details]
    counted = sum(event.details["count"] for event in events if "count" in event.details)
    assert 1 <= len(as_happened) <= 2 and len(events) <= 3
    assert len(as_happened) + counted <= 100


def test_tenant_limit_holds_across_its_keys_and_the_tighter_limit_wins(server, deployed, owner, key_factory):
    first, second = key_factory(owner, "first"), key_factory(owner, "second")
    quota(tenant=owner, rpm_limit=3)
    quota(api_key=first.key, rpm_limit=100)
    away_from_a_minute_boundary()
    for secret in (first.secret, second.secret, first.secret):
        sdk(server, secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(server, second.secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "tenant owner" in refused.value.body["message"]


def test_per_model_limit_applies_only_to_that_model(server, deployed, owner, key_factory):
    issued = key_factory(owner)
    quota(api_key=issued.key, model="gpt-4o", rpm_limit=1)
    away_from_a_minute_boundary()
    client = sdk(server, issued.secret)
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "model 'gpt-4o'" in refused.value.body["message"]
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def test_token_limit_refuses_a_request_that_would_exceed_it(server, deployed, owner, key_factory):
    issued = key_factory(owner)
    quota(api_key=issued.key, tpm_limit=200)
    away_from_a_minute_boundary()
    client = sdk(server, issued.secret)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=500)
    assert (refused.value.body["type"], refused.value.body["code"]) == ("tokens", "tpm_limit_exceeded")
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "200"
    response = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=50)
    # The reservation (prompt estimate + max_tokens) was replaced by the real usage.
    assert int(response.headers["x-ratelimit-remaining-tokens"]) < 200


def test_concurrency_limit_counts_open_streams_and_frees_the_slot_when_they_end(server, deployed, owner, key_factory):
    issued = key_factory(owner)
    quota(api_key=issued.key, max_parallel_requests=1)
    client = sdk(server, issued.secret)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fake chunks=20 gap_ms=50]]"}], stream=True
    )
    next(iter(stream))  # the stream is open and holds the slot
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert refused.value.body["code"] == "max_parallel_requests_exceeded"
    list(stream)
    deadline = time.monotonic() + 5
    while True:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the slot was not released after the stream ended"
            time.sleep(0.05)


def test_spent_budget_refuses_with_type_budget(server, deployed, owner, key_factory):
    issued = key_factory(owner)
    quota(api_key=issued.key, max_budget=Decimal("0.0001"), budget_duration="1d")
    client = sdk(server, issued.secret)
    with pytest.raises(openai.RateLimitError) as refused:
        # A reservation of 256 output tokens at gpt-4o's price is above a hundredth of a cent.
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert (refused.value.body["type"], refused.value.body["code"]) == ("budget", "budget_exceeded")
    assert "today" in refused.value.body["message"]
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)


def _burst(urls, secret, count, body):
    def one(index):
        return httpx.post(
            f"{urls[index % len(urls)]}/v1/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture
def three_servers(tmp_path, transactional_db):
    if not settings.REDIS_URL:
        pytest.skip("several processes share limits only through Redis (REDIS_URL)")
    with live.daphne_server(tmp_path) as a, live.daphne_server(tmp_path) as b, live.daphne_server(tmp_path) as c:
        yield [a.url, b.url, c.url]


def test_three_server_processes_admit_exactly_the_limit(three_servers, deployed, owner, key_factory):
    issued = key_factory(owner, "hammered")
    quota(api_key=issued.key, rpm_limit=20)
    away_from_a_minute_boundary()
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    statuses = [response.status_code for response in _burst(three_servers, issued.secret, 90, body)]
    assert statuses.count(200) == 20
    assert statuses.count(429) == 70


def test_concurrent_first_requests_of_a_new_key_cannot_overshoot_its_budget(
    three_servers, deployed, owner, key_factory
):
    from routing.models import RequestLog
    from routing.pricing import usage_cost

    body = b'{"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "[[fake chunks=900]]"}]}'
    reservation = usage_cost("openai/gpt-4o", len(body) // 4, 1000, None)
    budget = (reservation * Decimal("4.5")).quantize(Decimal("0.0001"))
    issued = key_factory(owner, "fresh")
    quota(api_key=issued.key, max_budget=budget, budget_duration="1d")
    responses = _burst(three_servers, issued.secret, 40, body)
    admitted = [r for r in responses if r.status_code == 200]
    assert {r.status_code for r in responses} <= {200, 429}
    assert 1 <= len(admitted) <= 5
    ids = [r.headers["x-request-id"] for r in admitted]
    for request_id in ids:
        wait_for_log(request_id=request_id)
    spent = sum(log.cost_usd for log in RequestLog.objects.filter(request_id__in=ids))
    assert spent <= budget + reservation


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
def test_redis_down_follows_the_configured_policy(tmp_path, deployed, owner, key_factory, mode, status):
    if not settings.REDIS_URL:
        pytest.skip("the embedded mode keeps quotas in process; there is no Redis to lose")
    issued = key_factory(owner)
    quota(api_key=issued.key, rpm_limit=1000)
    url = httpx.URL(settings.REDIS_URL)
    proxy = live.TcpProxy((url.host or "127.0.0.1", url.port or 6379))
    redis_url = str(url.copy_with(host="127.0.0.1", port=proxy.port))
    with live.daphne_server(tmp_path, REDIS_URL=redis_url, QUOTA_FAIL_MODE=mode) as server:
        client = sdk(server, issued.secret)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
        proxy.cut()
        if status == 200:
            assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
        else:
            with pytest.raises(openai.InternalServerError) as unavailable:
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert unavailable.value.status_code == 503
            assert unavailable.value.body["code"] == "quota_backend_unavailable"
