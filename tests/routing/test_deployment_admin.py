"""The deployment admin: credential params are write-only (entered, never shown), encrypted, audited by name;
a credential typed where plain text goes is refused without being echoed; bad JSON is a form error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from audit.models import AuditEvent
from routing.models import ModelDeployment
from tests.routing.secret_params import NAMED, lookup, params_with, raw_audit, raw_deployments


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def form(**fields: Any) -> dict[str, Any]:
    return {
        "model_name": "claude",
        "litellm_model": "bedrock/anthropic.claude-3",
        "api_base": "",
        "api_key": "",
        "extra_params": '{"aws_region_name": "eu-west-1"}',
        "secret_params": "",
        "enabled": "on",
        **fields,
    }


ADD = reverse("admin:routing_modeldeployment_add")


def change_url(deployment: ModelDeployment) -> str:
    return reverse("admin:routing_modeldeployment_change", args=[deployment.pk])


@pytest.mark.parametrize("name", NAMED)
def test_a_credential_entered_in_secret_params_is_encrypted_never_shown_and_only_named_in_the_audit(admin_client, name):
    value = f"plaintext-{name}-0451"
    response = admin_client.post(ADD, form(secret_params=json.dumps(params_with(name, value))))
    assert response.status_code == 302, response.content.decode()[:3000]

    deployment = ModelDeployment.objects.get()
    assert lookup(deployment.secret_params, name) == value
    assert value not in raw_deployments()
    page = admin_client.get(change_url(deployment)).content.decode()
    assert value not in page
    assert name in page  # which ones are stored is shown, their values are not
    assert value not in raw_audit()
    event = AuditEvent.objects.get(action="deployment.create")
    assert event.details["changes"][f"secret_params.{name}"] == {"before": "(empty)", "after": "(set)"}


def test_secret_params_are_replaced_one_by_one_removed_with_null_and_cleared(admin_client):
    admin_client.post(
        ADD, form(secret_params='{"aws_access_key_id": "AKIA-0451", "aws_secret_access_key": "first-0451"}')
    )
    deployment = ModelDeployment.objects.get()

    response = admin_client.post(change_url(deployment), form(secret_params='{"aws_secret_access_key": "second-0451"}'))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.secret_params == {"aws_access_key_id": "AKIA-0451", "aws_secret_access_key": "second-0451"}

    admin_client.post(change_url(deployment), form())  # left blank: every stored one is kept
    deployment.refresh_from_db()
    assert deployment.secret_params == {"aws_access_key_id": "AKIA-0451", "aws_secret_access_key": "second-0451"}

    admin_client.post(change_url(deployment), form(secret_params='{"aws_access_key_id": null}'))
    deployment.refresh_from_db()
    assert deployment.secret_params == {"aws_secret_access_key": "second-0451"}

    admin_client.post(change_url(deployment), form(clear_secret_params="on"))
    deployment.refresh_from_db()
    assert deployment.secret_params == {}

    changes = [e.details["changes"] for e in AuditEvent.objects.filter(action="deployment.change").order_by("id")]
    # The blank form changed nothing, so it recorded nothing: three changes, not four.
    assert len(changes) == 3
    assert changes[0]["secret_params.aws_secret_access_key"] == {"before": "(set)", "after": "(changed)"}
    assert changes[1]["secret_params.aws_access_key_id"] == {"before": "(set)", "after": "(removed)"}
    assert changes[2]["secret_params.aws_secret_access_key"] == {"before": "(set)", "after": "(removed)"}
    assert "0451" not in raw_audit()


def test_a_credential_typed_into_extra_params_is_refused_and_not_shown_back(admin_client):
    typed = {
        "aws_region_name": "eu-west-1",
        "aws_secret_access_key": "typed-0451",
        "extra_headers": {"api-key": "h-0451"},
    }
    response = admin_client.post(ADD, form(extra_params=json.dumps(typed)))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["extra_params"]
    assert "aws_secret_access_key, extra_headers.api-key" in errors[0] and "Secret params" in errors[0]
    page = response.content.decode()
    assert "typed-0451" not in page and "h-0451" not in page
    assert "eu-west-1" in page  # the rest of what was typed is kept
    assert not ModelDeployment.objects.exists()


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("https://alice:pw-0451@llm.example.com/v1", "pw-0451"),
        ("https://llm.example.com/v1?api-key=k-0451&api-version=2024", "k-0451"),
    ],
    ids=["user-info", "query"],
)
def test_an_api_base_carrying_a_credential_is_refused_and_not_shown_back(admin_client, url, hidden):
    response = admin_client.post(ADD, form(api_base=url))
    assert response.status_code == 200
    assert "credential" in response.context["adminform"].form.errors["api_base"][0]
    assert hidden not in response.content.decode()
    assert not ModelDeployment.objects.exists()


DEEP = '{"a": ' * 5000 + "1" + "}" * 5000


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"extra_params": DEEP}, "extra_params"),
        ({"extra_params": '{"note": "\\ud800"}'}, "extra_params"),
        ({"extra_params": '{"note": "a\\u0000b"}'}, "extra_params"),
        ({"extra_params": '{"extra_headers": {"X-Team": "a\\r\\nX-Injected: 1"}}'}, "extra_params"),
        ({"secret_params": DEEP}, "secret_params"),
        ({"secret_params": "[1, 2]"}, "secret_params"),
        ({"secret_params": "{not json"}, "secret_params"),
        ({"secret_params": '{"extra_headers": {"api-key": "a\\nb"}}'}, "secret_params"),
        ({"secret_params": '{"extra_headers": {"bad name": "x"}}'}, "secret_params"),
    ],
    ids=[
        "deep",
        "lone-surrogate",
        "nul",
        "header-injection",
        "secret-deep",
        "secret-list",
        "secret-not-json",
        "secret-header-line-break",
        "secret-header-name",
    ],
)
def test_bad_json_in_the_deployment_form_is_a_form_error(admin_client, fields, field):
    response = admin_client.post(ADD, form(**fields))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not ModelDeployment.objects.exists()


def test_deleting_a_deployment_in_the_admin_audits_credential_names_only(admin_client):
    admin_client.post(ADD, form(api_key="sk-0451", secret_params='{"client_secret": "cs-0451"}'))
    deployment = ModelDeployment.objects.get()
    response = admin_client.post(reverse("admin:routing_modeldeployment_delete", args=[deployment.pk]), {"post": "yes"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="deployment.delete")
    assert event.details["before"]["secret_params"] == ["client_secret"]
    assert event.details["before"]["api_key_set"] is True
    assert "0451" not in raw_audit()


def test_bulk_deleting_deployments_audits_credential_names_only(admin_client):
    admin_client.post(ADD, form(secret_params='{"azure_ad_token": "t-0451"}'))
    response = admin_client.post(
        reverse("admin:routing_modeldeployment_changelist"),
        {"action": "delete_selected", "_selected_action": [ModelDeployment.objects.get().pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not ModelDeployment.objects.exists()
    assert AuditEvent.objects.get(action="deployment.delete").details["before"]["secret_params"] == ["azure_ad_token"]
    assert "t-0451" not in raw_audit()


def test_a_new_deployments_form_offers_nothing_to_keep_and_gives_back_the_typed_key_with_its_errors(admin_client):
    page = admin_client.get(ADD).content.decode()
    assert "Leave blank to keep the current one" not in page  # nothing is stored yet
    assert "litellm&#x27;s provider/model" in page or "litellm's provider/model" in page

    response = admin_client.post(ADD, form(api_key="sk-typed-0451", api_base="not a url"))

    assert response.status_code == 200 and not ModelDeployment.objects.exists()
    assert 'value="sk-typed-0451"' in response.content.decode()  # not typed again after fixing the URL
    fixed = admin_client.post(ADD, form(api_key="sk-typed-0451"))
    assert fixed.status_code == 302
    stored = ModelDeployment.objects.get()
    page = admin_client.get(change_url(stored)).content.decode()
    assert "sk-typed-0451" not in page and "Leave blank to keep the current one" in page


def test_no_help_text_of_any_model_is_swallowed_as_html():
    """The admin renders help texts as HTML: an angle-bracketed hint (``<provider>``) would vanish."""
    from django.apps import apps

    swallowed = [
        f"{model._meta.label}.{field.name}: {field.help_text}"
        for model in apps.get_models()
        for field in model._meta.get_fields()
        if "<" in str(getattr(field, "help_text", "") or "")
    ]
    assert swallowed == []
