"""Whose chain records an export, and which tenants an exporter may name in its filter."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditChainHead, AuditEvent
from audit.services import audit_record
from tenants import services
from tenants.models import Membership

pytestmark = pytest.mark.django_db(transaction=True)
EXPORT = reverse("admin:audit_auditevent_export")


@pytest.fixture
def events(owner, outsider):
    for tenant in (owner, outsider):
        for n in range(3):
            audit_record(actor="user:someone", action=f"probe.{n}", tenant_id=tenant.pk)
    audit_record(actor="system", action="platform.thing")


def member_of(role: str, *tenants) -> Client:
    user = User.objects.create_user(f"{role}-{len(tenants)}", password="pw-for-tests-only")
    for tenant in tenants:
        services.membership_save(membership=Membership(user=user, tenant=tenant, role=role), actor="test")
    client = Client()
    client.force_login(user)
    return client


def exports() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="audit.export").order_by("chain"))


def refused(response) -> str:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    return response.content.decode()


def chains() -> set[str]:
    return set(AuditChainHead.objects.values_list("chain", flat=True))


def test_an_auditor_naming_another_tenant_gets_a_form_error_and_writes_nothing_there(events, owner, outsider):
    auditor = member_of("auditor", owner)
    before = AuditEvent.objects.filter(tenant_id=outsider.pk).count()
    page = refused(auditor.get(EXPORT, {"format": "jsonl", "tenant": outsider.pk}))
    assert f"Tenant {outsider.pk} is not one whose events you may export" in page
    assert AuditEvent.objects.filter(tenant_id=outsider.pk).count() == before
    assert exports() == []


@pytest.mark.parametrize("role", ["auditor", "superuser"])
def test_naming_a_tenant_that_does_not_exist_is_a_form_error_and_creates_no_chain(events, owner, role, admin_client):
    client = admin_client if role == "superuser" else member_of("auditor", owner)
    known = chains()
    page = refused(client.get(EXPORT, {"format": "csv", "tenant": 987654}))
    assert "Tenant 987654 is not one whose events you may export" in page
    huge = client.get(EXPORT, {"format": "csv", "tenant": "99999999999999999999"})
    assert huge.status_code == 400 and "too large for any id" in huge.content.decode()
    assert chains() == known and "tenant:987654" not in chains()
    assert exports() == []


def test_an_auditors_export_is_recorded_in_their_tenants_chains_never_the_platforms(events, owner, outsider):
    auditor = member_of("auditor", owner, outsider)
    assert auditor.get(EXPORT, {"format": "jsonl"}).status_code == 200
    recorded = exports()
    assert [(event.tenant_id, event.chain) for event in recorded] == sorted(
        [(owner.pk, f"tenant:{owner.pk}"), (outsider.pk, f"tenant:{outsider.pk}")], key=lambda pair: pair[1]
    )
    assert auditor.get(EXPORT, {"format": "jsonl", "tenant": owner.pk}).status_code == 200
    assert [event.tenant_id for event in exports()].count(owner.pk) == 2


def test_an_auditors_export_of_selected_events_is_recorded_in_the_chain_of_those_events(events, owner, outsider):
    auditor = member_of("auditor", owner)
    chosen = list(AuditEvent.objects.filter(tenant_id=owner.pk).values_list("pk", flat=True))
    response = auditor.post(
        reverse("admin:audit_auditevent_changelist"), {"action": "export_selected_jsonl", "_selected_action": chosen}
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert [(event.tenant_id, event.details["selected"]) for event in exports()] == [(owner.pk, len(chosen))]


def test_a_platform_admin_export_is_recorded_in_the_platform_chain_or_the_named_tenants(events, owner, admin_client):
    assert admin_client.get(EXPORT, {"format": "jsonl"}).status_code == 200
    assert [(event.tenant_id, event.chain) for event in exports()] == [(None, "platform")]
    assert admin_client.get(EXPORT, {"format": "jsonl", "tenant": owner.pk}).status_code == 200
    assert {event.chain for event in exports()} == {"platform", f"tenant:{owner.pk}"}
