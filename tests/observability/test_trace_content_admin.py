"""The per-tenant switch for prompt text in traces: off by default, set in the admin, audited, seen by key auth."""

from __future__ import annotations

import asyncio

from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from tenants.auth import key_authenticate_header
from tenants.models import Tenant

INLINE = {
    "api_keys-TOTAL_FORMS": "0",
    "api_keys-INITIAL_FORMS": "0",
    "quotas-TOTAL_FORMS": "0",
    "quotas-INITIAL_FORMS": "0",
}


def test_trace_content_is_off_by_default_and_an_audited_admin_change_reaches_key_auth(owner, owner_key):
    assert not owner.trace_content
    key = asyncio.run(key_authenticate_header(f"Bearer {owner_key.secret}", ip=None, endpoint="chat.completions"))
    assert not key.trace_content  # now cached in process

    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")
    client = Client()
    assert client.login(username="alice", password="correct horse battery staple")
    response = client.post(
        reverse("admin:tenants_tenant_change", args=[owner.pk]),
        {"slug": owner.slug, "name": owner.name, "is_active": "on", "trace_content": "on", **INLINE},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Tenant.objects.get(pk=owner.pk).trace_content
    event = AuditEvent.objects.get(action="tenant.change", target=f"tenant:{owner.slug}")
    assert event.details["changes"] == {"trace_content": {"before": False, "after": True}}
    assert event.actor.endswith("alice")
    # The change dropped the cached key: the hot path sees the opt-in at once.
    key = asyncio.run(key_authenticate_header(f"Bearer {owner_key.secret}", ip=None, endpoint="chat.completions"))
    assert key.trace_content
