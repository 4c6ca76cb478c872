"""Refused keys are audited with their tenant when the key is known, and a flood of refusals stays bounded."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import AuditEntry, DenialAggregator, deferred_audit, denial_aggregator
from core.errors import AuthenticationFailed, PermissionDenied
from llm_platform.asgi import application
from tenants import services
from tenants.auth import key_authenticate_header, key_cache, secret_hash_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def fresh_cache_and_connections():
    key_cache.clear()
    yield
    key_cache.clear()
    await sync_to_async(connections.close_all)()
    # The audit writer's own thread wrote what its timer flushed during the test.
    await asyncio.get_running_loop().run_in_executor(deferred_audit._executor, connections.close_all)


async def refused(header: str | None, ip: str = "203.0.113.7") -> Exception:
    with pytest.raises((AuthenticationFailed, PermissionDenied)) as caught:
        await key_authenticate_header(header, ip=ip, endpoint="chat.completions")
    return caught.value


async def flush() -> list[AuditEvent]:
    denial_aggregator.flush()
    await sync_to_async(deferred_audit.flush_now)()
    return await sync_to_async(lambda: list(AuditEvent.objects.filter(action="auth.failure").order_by("id")))()


async def test_refusals_of_known_keys_are_audited_in_their_tenants_chain(owner, key_factory, tenant_factory):
    revoked, expired = (
        await sync_to_async(key_factory)(owner, "revoked"),
        await sync_to_async(key_factory)(owner, "old"),
    )
    await sync_to_async(services.api_key_revoke)(api_key=revoked.key, actor="test")
    expired.key.expires_at = timezone.now() - dt.timedelta(minutes=1)
    await sync_to_async(services.api_key_update)(api_key=expired.key, actor="test")
    dormant = await sync_to_async(tenant_factory)("dormant", is_active=False)
    inactive = await sync_to_async(key_factory)(dormant, "inactive")
    for issued in (revoked, expired, inactive):
        await refused(f"Bearer {issued.secret}")
    await refused("Bearer sk-nobody-knows-this-key-0000")
    events = {event.details["reason"]: event for event in await flush()}
    assert (events["api_key_revoked"].tenant_id, events["api_key_revoked"].actor) == (
        owner.pk,
        f"key:{revoked.key.prefix}",
    )
    assert events["api_key_expired"].tenant_id == owner.pk
    assert events["api_key_expired"].chain == f"tenant:{owner.pk}"
    assert events["tenant_inactive"].tenant_id == dormant.pk
    assert events["invalid_api_key"].tenant_id is None and events["invalid_api_key"].chain == "platform"


async def test_a_thousand_refused_requests_make_a_handful_of_rows_whose_counts_add_up(owner_key):
    secrets = ["sk-flood-attempt-000000000000", owner_key.secret[:-1] + "x"]
    for secret in secrets:  # looked up here, so no request thread of the app holds a connection afterwards
        await key_cache.lookup(secret_hash_of(secret))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as client:
        started = asyncio.get_running_loop().time()
        for n in range(1000):
            secret = secrets[n % 2]
            response = await client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 401
        elapsed = asyncio.get_running_loop().time() - started
    events = await flush()  # the interval ends at the drain, as it would after AUDIT_DENIAL_INTERVAL
    assert len(events) <= 4, [(event.actor, event.details) for event in events]
    assert sum(event.details.get("count", 1) for event in events) == 1000
    assert {event.actor for event in events} == {"key:sk-flood-att", f"key:{owner_key.secret[:12]}"}
    summary = next(event for event in events if "count" in event.details)
    assert summary.details["first_at"] <= summary.details["last_at"]
    assert elapsed < 60, "the flood must be faster than the interval for this test to mean anything"


async def test_a_flood_of_ever_new_keys_and_addresses_is_bounded_by_the_overflow_bucket(monkeypatch):
    monkeypatch.setattr(denial_aggregator, "max_buckets", 10)
    for n in range(500):
        await refused(f"Bearer sk-{n:09d}-random-000000", ip=f"198.51.100.{n % 250}")
    for n in range(500):
        await refused(f"Bearer sk-{n:09d}-random-000000", ip=f"2001:db8::{n:x}")
    await flush()
    events = await sync_to_async(lambda: list(AuditEvent.objects.order_by("id")))()
    assert len(events) <= 2 * 10 + 1
    overflow = [event for event in events if event.action == "audit.denials_overflow"]
    assert len(overflow) == 1 and overflow[0].details["actions"] == {"auth.failure": 990}
    assert sum(event.details.get("count", 1) for event in events) == 1000


async def test_the_summary_is_written_when_the_interval_ends_without_another_refusal():
    written: list[AuditEntry] = []
    aggregator = DenialAggregator(interval=0.2, max_buckets=100, write=written.append)
    entry = AuditEntry(actor="key:sk-x", action="auth.failure", ip="192.0.2.1", details={"reason": "invalid_api_key"})
    for _ in range(5):
        aggregator.record(entry)
    assert len(written) == 1
    await asyncio.sleep(0.4)
    assert [item.details.get("count") for item in written] == [None, 4]
    aggregator.record(entry)  # a new interval: the first is written again
    assert len(written) == 3


async def test_scope_refusals_are_bounded_the_same_way(owner, key_factory):
    issued = await sync_to_async(key_factory)(owner, "chat only", scopes=["chat"])
    context = await key_authenticate_header(f"Bearer {issued.secret}", ip="192.0.2.9", endpoint="audit")
    for _ in range(50):
        context.denied("no", code="scope_not_allowed", target="scope:audit")
    denial_aggregator.flush()
    await sync_to_async(deferred_audit.flush_now)()
    events = await sync_to_async(lambda: list(AuditEvent.objects.filter(action="authz.denied")))()
    assert len(events) == 2 and sum(event.details.get("count", 1) for event in events) == 50
    assert all(event.tenant_id == owner.pk for event in events)


async def test_two_authorization_headers_are_refused_and_audited_at_every_front_door(owner_key):
    from tenants.auth import key_authenticate_request

    headers = [(b"authorization", f"Bearer {owner_key.secret}".encode()), (b"authorization", b"Bearer sk-other")]
    with pytest.raises(AuthenticationFailed) as caught:
        await key_authenticate_request(headers, ip="192.0.2.4", endpoint="chat.completions")
    assert caught.value.code == "ambiguous_credentials"
    events = await flush()
    assert [(event.actor, event.tenant_id, event.details["reason"]) for event in events] == [
        ("anonymous", None, "ambiguous_credentials")
    ]
