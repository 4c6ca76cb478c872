"""Values a deployment or route group cannot hold safely are validation errors from the service (so the admin,
loadconfig and scripts all get a clear message), never a credential in plain text nor a database error."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from routing.models import ModelDeployment, RouteGroup
from routing.services import deployment_delete, deployment_save, route_group_save
from tests.routing.secret_params import raw_audit


def deployment(**fields: Any) -> ModelDeployment:
    fields.setdefault("model_name", "gpt-4o")
    fields.setdefault("litellm_model", "azure/gpt-4o")
    return ModelDeployment(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"api_base": "https://alice:pw@example.openai.azure.com"}, "api_base"),
        ({"api_base": "https://example.openai.azure.com/?api-key=k&api-version=1"}, "api_base"),
        ({"extra_params": {"extra_headers": {"X-Team": "a\r\nX-Injected: 1"}}}, "extra_params"),
        ({"extra_params": {"headers": {"X Team": "a"}}}, "extra_params"),
        ({"extra_params": {"extra_headers": ["api-key", "k"]}}, "extra_params"),
        ({"secret_params": {"extra_headers": {"api-key": "k\n"}}}, "secret_params"),
        ({"extra_params": {"note": "a\x00b"}}, "extra_params"),
        ({"extra_params": {"note": "\ud800"}}, "extra_params"),
        ({"extra_params": ["not", "an", "object"]}, "extra_params"),
        ({"secret_params": {"client_secret": dt.datetime(2026, 1, 1)}}, "secret_params"),
        ({"model_name": "gpt\x00-4o"}, "model_name"),
    ],
    ids=[
        "url-user-info",
        "url-query-key",
        "header-injection",
        "header-name",
        "headers-not-a-mapping",
        "secret-header-line-break",
        "nul",
        "lone-surrogate",
        "not-an-object",
        "not-json",
        "nul-in-name",
    ],
)
def test_the_deployment_service_refuses_unsafe_values_with_a_validation_error(db, fields, field):
    with pytest.raises(ValidationError) as raised:
        deployment_save(deployment=deployment(**fields), actor="test")
    assert field in raised.value.message_dict
    assert not ModelDeployment.objects.exists()


@pytest.mark.parametrize(
    "fields", [{"model_name": "gpt\x00-4o"}, {"fallbacks": ["gpt\x00-4o-mini"]}], ids=["name", "fallback"]
)
def test_the_route_group_service_refuses_nul_characters(db, fields):
    fields.setdefault("model_name", "gpt-4o")
    with pytest.raises(ValidationError):
        route_group_save(group=RouteGroup(**fields), actor="test")
    assert not RouteGroup.objects.exists()


def test_loadconfig_refuses_an_api_base_carrying_a_credential_without_repeating_it(db, tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params: {model: azure/gpt-4o, api_base: 'https://alice:pw-0451@example.openai.azure.com'}\n"
    )
    with pytest.raises(CommandError) as raised:
        call_command("loadconfig", str(path))
    assert "carries a credential" in str(raised.value) and "pw-0451" not in str(raised.value)
    assert not ModelDeployment.objects.exists()


def test_a_stored_api_base_carrying_a_credential_is_audited_without_it(db):
    # Written before api_base was checked (bulk_create goes around the service, as old rows did).
    ModelDeployment.objects.bulk_create([deployment(api_base="https://alice:pw-0451@example.openai.azure.com/v1")])
    deployment_delete(deployment=ModelDeployment.objects.get(), actor="test")
    event = AuditEvent.objects.get(action="deployment.delete")
    assert event.details["before"]["api_base"] == "https://example.openai.azure.com/v1 (credential removed)"
    assert "pw-0451" not in raw_audit()
