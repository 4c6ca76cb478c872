"""The admin: route groups are edited through services (audited, versioned); every request's
routing decision is readable on its request log page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from audit.models import AuditEvent
from routing.models import ModelDeployment, RequestLog, RouteGroup


@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


DECISION = {
    "group": "gpt-4o-mini",
    "strategy": "least-busy",
    "policy_version": 3,
    "shared_state": True,
    "candidates": [
        {"id": 1, "model": "openai/gpt-4o-mini", "score": 2.0},
        {"id": 2, "model": "azure/gpt-4o-mini", "excluded": "cooldown"},
    ],
    "chosen": 1,
    "served": 3,
    "served_model": "gpt-4o",
    "attempts": [{"deployment": 1, "group": "gpt-4o-mini", "status": 502, "error": "upstream_error", "ms": 12.5}],
    "fallbacks": [{"model": "gpt-4o", "reason": "retry"}],
    "decision_ms": 0.042,
    "prompt_sha256": "ab" * 32,
    "ml": {"router": "knn@2", "threshold": 0.4},
}


def test_request_log_page_shows_the_routing_decision(admin_client, owner):
    log = RequestLog.objects.create(
        request_id="req_decision",
        created_at=timezone.now() - dt.timedelta(minutes=1),
        tenant=owner,
        status_code=200,
        route_decision=DECISION,
    )
    page = admin_client.get(f"/admin/routing/requestlog/{log.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Routing decision" in html
    assert "strategy <b>least-busy</b> (policy version 3; state shared (Redis))" in html
    assert "<td>azure/gpt-4o-mini</td><td>—</td><td>cooldown</td>" in html
    assert "<td>upstream_error</td><td>12.5</td>" in html
    assert "Fallbacks: gpt-4o (retry)" in html
    assert "ab" * 32 in html
    assert "knn@2" in html


def test_request_log_without_a_decision_says_why(admin_client, owner):
    log = RequestLog.objects.create(request_id="req_none", created_at=timezone.now(), tenant=owner, status_code=401)
    html = admin_client.get(f"/admin/routing/requestlog/{log.pk}/change/").content.decode()
    assert "No routing decision was recorded for this request (HTTP 401): it was answered before routing" in html


def test_route_group_admin_creates_and_changes_with_audit_and_version(admin_client):
    ModelDeployment.objects.create(
        model_name="gpt-4o-mini", litellm_model="openai/gpt-4o-mini", extra_params={"weight": 3, "rpm": 100}
    )
    form = {
        "model_name": "gpt-4o-mini",
        "routing_strategy": "latency-based-routing",
        "num_retries": "2",
        "retry_after": "0.1",
        "allowed_fails": "3",
        "fail_window": "60",
        "cooldown_time": "5",
        "fallbacks": '["gpt-4o"]',
        "context_window_fallbacks": "[]",
        "content_policy_fallbacks": "[]",
    }
    response = admin_client.post("/admin/routing/routegroup/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    group = RouteGroup.objects.get(model_name="gpt-4o-mini")
    assert group.version == 1 and group.fallbacks == ["gpt-4o"]
    assert AuditEvent.objects.filter(action="route_group.create", actor="user:root").exists()
    page = admin_client.get(f"/admin/routing/routegroup/{group.pk}/change/").content.decode()
    assert "<td>openai/gpt-4o-mini</td><td>—</td><td>3</td><td>100</td>" in page
    response = admin_client.post(
        f"/admin/routing/routegroup/{group.pk}/change/", {**form, "routing_strategy": "cost-based-routing"}
    )
    assert response.status_code == 302
    group.refresh_from_db()
    assert group.version == 2
    change = AuditEvent.objects.get(action="route_group.change")
    assert change.details["changes"]["routing_strategy"] == {
        "before": "latency-based-routing",
        "after": "cost-based-routing",
    }


def test_route_group_form_refuses_bad_fallbacks(admin_client):
    form = {
        "model_name": "loop",
        "routing_strategy": "simple-shuffle",
        "num_retries": "2",
        "retry_after": "0",
        "allowed_fails": "3",
        "fail_window": "60",
        "cooldown_time": "5",
        "fallbacks": '["loop"]',
        "context_window_fallbacks": '"not a list"',
        "content_policy_fallbacks": "[]",
    }
    response = admin_client.post("/admin/routing/routegroup/add/", form)
    assert response.status_code == 200
    html = response.content.decode()
    assert "A group cannot fall back to itself." in html
    assert "Must be a JSON list of model names." in html
    assert not RouteGroup.objects.exists()


def test_deployment_with_a_negative_weight_is_refused(admin_client):
    response = admin_client.post(
        "/admin/routing/modeldeployment/add/",
        {
            "model_name": "m",
            "litellm_model": "openai/m",
            "api_base": "",
            "extra_params": '{"weight": -1, "rpm": "many"}',
            "enabled": "on",
        },
    )
    assert response.status_code == 200
    assert "weight must be a non-negative number" in response.content.decode()
    assert not ModelDeployment.objects.exists()


def test_times_and_money_are_labelled_with_their_units_everywhere():
    """A column named ``*_ms`` or ``*_usd`` reads "… (ms)" or "… (USD)" in the admin, never the column's name."""
    from django.apps import apps

    def unlabelled(field: object) -> bool:
        name, label = field.name, str(field.verbose_name)  # type: ignore[attr-defined]
        if name.endswith("_ms") or "_ms_" in name:
            return not label.endswith("(ms)")
        return name.endswith("_usd") and not label.endswith("(USD)")

    missing = [
        f"{model._meta.label}.{field.name}: {field.verbose_name}"
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if unlabelled(field)
    ]
    assert missing == []
    assert apps.get_model("routing.TenantRoutingData")._meta.verbose_name_plural == "tenant routing data"
