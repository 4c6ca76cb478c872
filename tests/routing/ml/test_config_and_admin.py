"""Smart groups from ``loadconfig`` and in the admin: edits, tenant shares, the evaluation chart, actions."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditEvent
from routing.ml import services
from routing.ml.models import RouterArtifact, SmartGroup, SmartGroupTenantShare

CONFIG = """
tenants:
  - slug: acme
smart_groups:
  - name: auto
    strong: {model: gpt-4o, price_per_mtok: 12.5}
    weak: gpt-4o-mini
    router: logistic
    strong_share: 0.3
    tenant_shares: {acme: 0.6}
  - name: auto-rules
    strong: gpt-4o
    weak: gpt-4o-mini
    router: rules
    rules: {strong_keywords: [prove], strong_if_chars_over: 4000}
"""


def load(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("loadconfig", str(path), stdout=out)
    return out.getvalue()


def test_loadconfig_creates_smart_groups_idempotently(tmp_path, transactional_db):
    load(tmp_path, CONFIG)
    group = SmartGroup.objects.get(name="auto")
    assert (group.strong_model, group.weak_model, group.router_kind) == ("gpt-4o", "gpt-4o-mini", "logistic")
    assert (group.strong_price, group.strong_share) == (12.5, 0.3)
    assert SmartGroupTenantShare.objects.get(group=group).strong_share == 0.6
    assert SmartGroup.objects.get(name="auto-rules").rules["strong_keywords"] == ["prove"]
    events = AuditEvent.objects.filter(action__startswith="smart_group.").count()
    second = load(tmp_path, CONFIG)
    assert "0 created, 0 updated" in second
    assert AuditEvent.objects.filter(action__startswith="smart_group.").count() == events


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: x, strong: a, weak: b, router: magic}", "router must be one of"),
        ("{name: x, strong: a, weak: b, strong_share: 2}", "strong_share must be a number between 0 and 1"),
        ("{name: x, weak: b}", "strong must be a model name"),
        ("{name: x, strong: a, weak: b, colour: red}", "unknown field"),
        ("{name: x, strong: a, weak: b, tenant_shares: {ghost: 0.5}}", "no tenant 'ghost'"),
    ],
)
def test_loadconfig_rejects_bad_smart_groups_and_applies_nothing(tmp_path, transactional_db, entry, message):
    with pytest.raises(CommandError, match=message):
        load(tmp_path, f"smart_groups:\n  - {entry}\n")
    assert not SmartGroup.objects.exists()


@pytest.fixture
def admin_client(transactional_db) -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client = Client()
    client.login(username="root", password="pw-for-tests-only")
    return client


def test_admin_shows_the_evaluation_chart_and_promotes(admin_client, group_factory):
    group = group_factory()
    artifact = services.router_train(group=group, actor="test", kind="logistic", include_traffic=False)
    page = admin_client.get(f"/admin/routing/routerartifact/{artifact.pk}/change/").content.decode()
    assert "<svg" in page and "quality recovered" in page and "always strong" in page
    assert "http://" not in page.split("<svg", 1)[1].split("</svg>", 1)[0].replace("http://www.w3.org", "")
    response = admin_client.post(
        "/admin/routing/routerartifact/", {"action": "promote", "_selected_action": [artifact.pk]}
    )
    assert response.status_code == 302
    group.refresh_from_db()
    assert group.active_artifact_id == artifact.pk
    assert AuditEvent.objects.filter(action="router.promote", actor="user:root").exists()
    group_page = admin_client.get(f"/admin/routing/smartgroup/{group.pk}/change/").content.decode()
    assert "<svg" in group_page  # the active router's evaluation


def test_admin_edits_a_group_through_the_service(admin_client, owner):
    response = admin_client.post(
        "/admin/routing/smartgroup/add/",
        {
            "name": "auto",
            "strong_model": "gpt-4o",
            "weak_model": "gpt-4o-mini",
            "strong_price": "10",
            "weak_price": "0.6",
            "router_kind": "knn",
            "strong_share": "0.4",
            "rules": "{}",
            "mode": "active",
            "enabled": "on",
            "tenant_shares-TOTAL_FORMS": "1",
            "tenant_shares-INITIAL_FORMS": "0",
            "tenant_shares-0-tenant": str(owner.pk),
            "tenant_shares-0-strong_share": "0.9",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    group = SmartGroup.objects.get(name="auto")
    assert SmartGroupTenantShare.objects.get(group=group, tenant=owner).strong_share == 0.9
    assert AuditEvent.objects.filter(action="smart_group.create").exists()
    assert AuditEvent.objects.filter(action="smart_group.tenant_share", tenant_id=owner.pk).exists()
    assert not RouterArtifact.objects.exists()
