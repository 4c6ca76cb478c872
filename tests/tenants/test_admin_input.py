"""Hostile values in the admin's forms: a form error that keeps what was typed, never a 500."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

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
