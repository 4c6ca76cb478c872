"""The admin as a person uses it, through its own HTTP views: tenants, keys shown once,
revocation that the API honours, deployments whose credentials never show, and audit."""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from routing.models import ModelDeployment
from tenants.models import ApiKey, Quota, Tenant, key_hash


@pytest.fixture
def admin_client(transactional_db) -> Client:
    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")
    client = Client()
    assert client.login(username="alice", password="correct horse battery staple")
    return client


def wait_for_audit(**filters: object) -> AuditEvent:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event = AuditEvent.objects.filter(**filters).first()
        if event is not None:
            return event
        time.sleep(0.05)
    raise AssertionError(f"no audit event matching {filters}")


QUOTAS = {"quotas-TOTAL_FORMS": "0", "quotas-INITIAL_FORMS": "0"}
INLINE = {"api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0", **QUOTAS}


def add_tenant(client: Client, slug: str = "search", name: str = "Search team") -> Tenant:
    response = client.post(
        reverse("admin:tenants_tenant_add"), {"slug": slug, "name": name, "is_active": "on", **INLINE}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return Tenant.objects.get(slug=slug)


def add_key(client: Client, tenant: Tenant, **fields: str) -> tuple[ApiKey, str, str]:
    response = client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": tenant.pk, "name": "backend", "allowed_models": "", **QUOTAS, **fields},
    )
    assert response.status_code == 200
    page = response.content.decode()
    secret = page.split('id="api-key-secret" type="text" readonly value="')[1].split('"')[0]
    return ApiKey.objects.get(tenant=tenant, name=fields.get("name", "backend")), secret, page


def test_create_use_revoke_a_key_and_every_step_is_audited(admin_client, server, deployment_factory):
    deployment_factory()
    tenant = add_tenant(admin_client)
    key, secret, page = add_key(admin_client, tenant)
    assert "shown only this once" in page
    assert secret.startswith("sk-") and key.secret_hash == key_hash(secret)
    assert not ApiKey.objects.filter(secret_hash=secret).exists()
    change_page = admin_client.get(reverse("admin:tenants_apikey_change", args=[key.pk])).content.decode()
    assert secret not in change_page and key.prefix in change_page

    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    assert api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices

    asked = admin_client.post(
        reverse("admin:tenants_apikey_changelist"), {"action": "revoke_keys", "_selected_action": [key.pk]}
    )
    assert asked.status_code == 200 and "Revoke API keys?" in asked.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None  # nothing happens until it is confirmed
    response = admin_client.post(
        reverse("admin:tenants_apikey_changelist"),
        {"action": "revoke_keys", "post": "yes", "_selected_action": [key.pk]},
        follow=True,
    )
    assert "Revoked 1 API key(s)." in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    with pytest.raises(openai.AuthenticationError) as refused:
        api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "api_key_revoked"

    created = AuditEvent.objects.get(action="tenant.create", actor="user:alice")
    assert created.details["changes"]["slug"] == {"before": None, "after": "search"}
    assert created.tenant_id == tenant.pk and created.ip == "127.0.0.1"
    assert AuditEvent.objects.get(action="api_key.create", actor="user:alice").details["after"]["prefix"] == key.prefix
    revoked = AuditEvent.objects.get(action="api_key.revoke", actor="user:alice")
    assert revoked.details["changes"]["revoked_at"]["before"] is None
    failure = wait_for_audit(action="auth.failure", actor=f"key:{secret[:12]}")
    assert failure.outcome == "denied" and failure.details["reason"] == "api_key_revoked"


def test_tenant_change_and_delete_are_audited_with_before_and_after(admin_client):
    tenant = add_tenant(admin_client)
    response = admin_client.post(
        reverse("admin:tenants_tenant_change", args=[tenant.pk]),
        {"slug": "search", "name": "Search & ranking", **INLINE},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    changed = AuditEvent.objects.get(action="tenant.change")
    assert changed.details["changes"] == {
        "is_active": {"before": True, "after": False},
        "name": {"before": "Search team", "after": "Search & ranking"},
    }
    response = admin_client.post(reverse("admin:tenants_tenant_delete", args=[tenant.pk]), {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="tenant.delete")
    assert deleted.details["before"]["name"] == "Search & ranking"


@pytest.mark.parametrize(
    ("data", "field_error"),
    [
        ({"slug": "x", "name": ""}, "name"),
        ({"slug": "Not A Slug", "name": "x"}, "slug"),
    ],
)
def test_tenant_form_rejects_bad_input_with_form_errors(admin_client, data, field_error):
    response = admin_client.post(reverse("admin:tenants_tenant_add"), {**data, **INLINE})
    assert response.status_code == 200
    assert field_error in response.context["adminform"].form.errors
    assert not Tenant.objects.exists()


def test_duplicate_tenant_slug_is_a_form_error(admin_client):
    add_tenant(admin_client)
    response = admin_client.post(reverse("admin:tenants_tenant_add"), {"slug": "search", "name": "Again", **INLINE})
    assert response.status_code == 200
    assert "slug" in response.context["adminform"].form.errors


def test_key_with_an_expiry_in_the_past_is_refused(admin_client):
    tenant = add_tenant(admin_client)
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": tenant.pk, "name": "old", "expires_at_0": "2001-01-01", "expires_at_1": "00:00:00", **QUOTAS},
    )
    assert response.status_code == 200
    assert "expires_at" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def deployment_form(**fields: str) -> dict[str, str]:
    return {
        "model_name": "gpt-4o-mini",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "api_key": "",
        "extra_params": "{}",
        "enabled": "on",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "field_error"),
    [
        ({"litellm_model": "gpt-4o-mini"}, "litellm_model"),
        ({"extra_params": "[1, 2]"}, "extra_params"),
        ({"extra_params": "{not json"}, "extra_params"),
        ({"api_base": "ftp://example.com"}, "api_base"),
    ],
)
def test_deployment_form_rejects_bad_input_with_form_errors(admin_client, fields, field_error):
    response = admin_client.post(reverse("admin:routing_modeldeployment_add"), deployment_form(**fields))
    assert response.status_code == 200
    assert field_error in response.context["adminform"].form.errors
    assert not ModelDeployment.objects.exists()


def test_provider_credential_is_write_only_and_kept_when_left_blank(admin_client):
    response = admin_client.post(
        reverse("admin:routing_modeldeployment_add"), deployment_form(api_key="sk-provider-very-secret")
    )
    assert response.status_code == 302
    deployment = ModelDeployment.objects.get()
    change_url = reverse("admin:routing_modeldeployment_change", args=[deployment.pk])
    assert "sk-provider-very-secret" not in admin_client.get(change_url).content.decode()
    response = admin_client.post(change_url, deployment_form(model_name="renamed"))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.model_name == "renamed" and deployment.api_key == "sk-provider-very-secret"
    events = AuditEvent.objects.filter(action__startswith="deployment.").order_by("id")
    assert [event.action for event in events] == ["deployment.create", "deployment.change"]
    assert events[1].details["changes"]["model_name"] == {"before": "gpt-4o-mini", "after": "renamed"}
    assert "sk-provider-very-secret" not in str([event.details for event in events])


def test_audit_events_can_be_read_but_not_added_changed_or_deleted(admin_client):
    add_tenant(admin_client)
    event = AuditEvent.objects.get()
    assert admin_client.get(reverse("admin:audit_auditevent_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:audit_auditevent_change", args=[event.pk])).content.decode()
    assert "tenant.create" in page and 'name="_save"' not in page
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_admin_list_pages_render(admin_client, owner_key):
    for name in (
        "tenants_tenant",
        "tenants_apikey",
        "routing_modeldeployment",
        "routing_requestlog",
        "audit_auditevent",
    ):
        assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200, name
        assert admin_client.get(reverse(f"admin:{name}_changelist"), {"q": "x"}).status_code == 200, name


def tenant_with_quota(client: Client, tenant: Tenant, **quota: str):
    data = {
        "slug": tenant.slug,
        "name": tenant.name,
        "is_active": "on",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "quotas-TOTAL_FORMS": "1",
        "quotas-INITIAL_FORMS": "0",
        "quotas-0-model": "",
        "quotas-0-budget_duration": "30d",
        **{f"quotas-0-{name}": value for name, value in quota.items()},
    }
    return client.post(reverse("admin:tenants_tenant_change", args=[tenant.pk]), data)


@pytest.mark.parametrize(
    ("quota", "field"),
    [
        ({"rpm_limit": "-5"}, "rpm_limit"),
        ({"tpm_limit": "99999999999"}, "tpm_limit"),
        ({"max_budget": "-1"}, "max_budget"),
        ({"max_budget": "1e30"}, "max_budget"),
        ({"max_parallel_requests": "lots"}, "max_parallel_requests"),
    ],
)
def test_quota_inline_rejects_negative_and_absurd_limits(admin_client, quota, field):
    tenant = add_tenant(admin_client)
    response = tenant_with_quota(admin_client, tenant, **quota)
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors
    assert field in errors[0]
    assert not Quota.objects.exists()


def test_quota_saved_in_the_admin_is_audited(admin_client):
    tenant = add_tenant(admin_client)
    response = tenant_with_quota(admin_client, tenant, rpm_limit="60", max_budget="12.5")
    assert response.status_code == 302, response.content.decode()[:2000]
    quota = Quota.objects.get(tenant=tenant)
    assert (quota.rpm_limit, quota.max_budget) == (60, Decimal("12.5"))
    event = AuditEvent.objects.get(action="quota.create")
    assert event.tenant_id == tenant.pk and event.actor == "user:alice"
    assert event.details["changes"]["rpm_limit"] == {"before": None, "after": 60}
