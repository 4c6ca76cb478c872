"""Hostile values in the admin's forms: a form error that keeps what was typed, never a 500."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from mcp_gateway.models import UpstreamServer
from routing.models import ModelDeployment
from tenants.models import ApiKey

QUOTAS = {"quotas-TOTAL_FORMS": "0", "quotas-INITIAL_FORMS": "0"}


@pytest.fixture
def root(transactional_db) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only"))
    return client


@pytest.mark.parametrize("models", ["gpt-4o\x00", "a, b\x00c"])
def test_a_nul_in_a_keys_model_names_is_a_form_error(root, owner, models):
    response = root.post(
        reverse("admin:tenants_apikey_add"), {"tenant": owner.pk, "name": "k", "allowed_models": models, **QUOTAS}
    )
    assert response.status_code == 200 and "allowed_models" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def test_a_nul_escaped_in_a_deployments_json_is_a_form_error(root):
    data = {
        "model_name": "m",
        "litellm_model": "openai/m",
        "api_base": "",
        "api_key": "",
        "extra_params": '{"weight": 1, "note": "a\\u0000b"}',
        "enabled": "on",
    }
    response = root.post(reverse("admin:routing_modeldeployment_add"), data)
    assert response.status_code == 200, response.status_code
    assert "extra_params" in response.context["adminform"].form.errors
    assert not ModelDeployment.objects.exists()


def server_form(**fields: str) -> dict[str, str]:
    return {
        "name": "metadata",
        "url": "http://169.254.169.254/latest/mcp",
        "transport": "streamable_http",
        "command": "",
        "credential_header": "Authorization",
        "credential": "",
        "enabled": "on",
        "tools-TOTAL_FORMS": "0",
        "tools-INITIAL_FORMS": "0",
        **fields,
    }


def test_an_upstream_url_the_ssrf_check_refuses_is_a_form_error_keeping_what_was_typed(root):
    response = root.post(reverse("admin:mcp_upstreamserver_add"), server_form())
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "link-local, metadata or private address" in form.errors["url"][0]
    page = response.content.decode()
    assert 'value="http://169.254.169.254/latest/mcp"' in page and 'value="metadata"' in page
    assert not UpstreamServer.objects.exists()


def test_changing_a_server_to_a_refused_url_is_a_form_error_and_keeps_the_stored_one(root):
    server = UpstreamServer.objects.create(name="docs", url="https://93.184.215.14/mcp")
    url = reverse("admin:mcp_upstreamserver_change", args=[server.pk])
    response = root.post(url, server_form(name="docs", url="http://127.0.0.1:6379/"))
    assert response.status_code == 200 and "loopback" in response.context["adminform"].form.errors["url"][0]
    assert 'value="http://127.0.0.1:6379/"' in response.content.decode()
    server.refresh_from_db()
    assert server.url == "https://93.184.215.14/mcp"
