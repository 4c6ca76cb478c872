"""GET /v1/audit/events: the key's tenant's trail, by cursor, for keys with the audit scope only."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.chain import event_hash
from audit.models import AuditEvent
from audit.services import audit_record, deferred_audit

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/v1/audit/events"


def get(secret: str, **params: object):
    return Client().get(URL, params, HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def auditor_key(owner, key_factory):
    return key_factory(owner, "audit key", scopes=["audit"])


@pytest.fixture
def trail(owner, outsider):
    for n in range(25):
        audit_record(actor=f"user:u{n % 2}", action="probe.step", tenant_id=owner.pk, details={"n": n})
    audit_record(actor="user:x", action="probe.foreign", tenant_id=outsider.pk)


def test_an_auditor_key_pages_through_its_tenants_events_by_cursor(auditor_key, trail, owner):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        body = get(auditor_key.secret, **params).json()
        pages += 1
        seen += body["data"]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            break
    expected = list(AuditEvent.objects.filter(tenant_id=owner.pk, id__lte=seen[-1]["id"]).order_by("id"))
    assert [row["id"] for row in seen] == [event.pk for event in expected] and pages == 3
    assert all(row["tenant_id"] == owner.pk for row in seen)
    assert all(event_hash(row) == row["hash"] for row in seen)
    deferred_audit.flush_now()
    assert AuditEvent.objects.filter(action="audit.read", tenant_id=owner.pk).count() == 1
    # The last cursor keeps working for polling: newer events appear after it.
    audit_record(actor="user:late", action="probe.late", tenant_id=owner.pk)
    later = get(auditor_key.secret, cursor=cursor).json()
    assert "probe.late" in [row["action"] for row in later["data"]]


def test_filters_narrow_the_listing(auditor_key, trail):
    body = get(auditor_key.secret, actor="user:u1", action="probe.", outcome="success").json()
    assert len(body["data"]) == 12 and {row["actor"] for row in body["data"]} == {"user:u1"}
    assert get(auditor_key.secret, since="2999-01-01T00:00:00Z").json()["data"] == []


def test_keys_without_the_audit_scope_are_refused_and_the_refusal_is_audited(owner, key_factory, trail):
    for scopes in ([], ["chat"]):
        issued = key_factory(owner, f"key {scopes}", scopes=scopes)
        response = get(issued.secret)
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "permission_error"
        assert response.json()["error"]["code"] == "scope_not_allowed"
    deferred_audit.flush_now()
    refusals = AuditEvent.objects.filter(action="authz.denied", target="scope:audit", tenant_id=owner.pk)
    assert refusals.count() == 2 and refusals.first().outcome == "denied"
    assert get("sk-not-a-real-key-at-all-000000").status_code == 401


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"outcome": "maybe"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
    ],
)
def test_bad_input_gets_an_openai_style_400(auditor_key, params, param):
    response = get(auditor_key.secret, **params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
