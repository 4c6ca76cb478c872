"""An audited object's History button opens its tamper-evident audit trail, not Django's separate log."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client

from routing.models import ModelDeployment
from routing.services import deployment_save
from tenants import services
from tenants.models import Membership, Tenant

pytestmark = pytest.mark.django_db

AUDIT_LIST = "/admin/audit/auditevent/"


def _trail(client: Client, history_url: str) -> tuple[dict[str, list[str]], str]:
    response = client.get(history_url)
    assert response.status_code == 302, response.status_code
    location = urlsplit(response["Location"])
    assert location.path == AUDIT_LIST
    page = client.get(response["Location"])
    assert page.status_code == 200
    return parse_qs(location.query), page.content.decode()


def test_a_deployments_history_is_its_audit_trail_under_every_name_it_had(admin_client: Client) -> None:
    made = ModelDeployment(model_name="gpt-4o", litellm_model="openai/gpt-4o", api_key="sk-upstream")
    deployment = deployment_save(deployment=made, actor="test")
    deployment.model_name = "gpt-4o-renamed"
    deployment_save(deployment=deployment, actor="test")
    other = deployment_save(deployment=ModelDeployment(model_name="other", litellm_model="openai/o"), actor="test")

    query, page = _trail(admin_client, f"/admin/routing/modeldeployment/{deployment.pk}/history/")

    assert query == {"target__startswith": [f"deployment:{deployment.pk}:"]}
    assert "deployment.create" in page and "deployment.change" in page
    assert f"deployment:{deployment.pk}:gpt-4o" in page and f"deployment:{other.pk}:" not in page


def test_a_tenants_history_follows_it_through_a_slug_change(admin_client: Client) -> None:
    tenant = services.tenant_save(tenant=Tenant(slug="acme", name="Acme"), actor="test")
    tenant.slug = "acme-corp"
    services.tenant_save(tenant=tenant, actor="test")
    services.tenant_save(tenant=Tenant(slug="globex", name="Globex"), actor="test")

    query, page = _trail(admin_client, f"/admin/tenants/tenant/{tenant.pk}/history/")

    assert query == {"tenant_id": [str(tenant.pk)], "action__startswith": ["tenant."]}
    assert "tenant.create" in page and "tenant.change" in page  # made as acme, renamed acme-corp
    assert "tenant:acme-corp" in page and "tenant:globex" not in page


def test_a_role_without_the_audit_trail_keeps_the_plain_history_and_hostile_ids_get_a_page() -> None:
    tenant = services.tenant_save(tenant=Tenant(slug="acme", name="Acme"), actor="test")
    key, _ = services.api_key_create(tenant=tenant, name="ci", actor="test")
    developer = User.objects.create_user("dev", password="pw-for-tests-only")
    services.membership_save(membership=Membership(user=developer, tenant=tenant, role="developer"), actor="test")
    client = Client(raise_request_exception=False)
    client.force_login(developer)

    assert not developer.has_perm("audit.view_auditevent")
    assert client.get(f"/admin/tenants/apikey/{key.pk}/history/").status_code == 200  # Django's own page
    for bad in ("abc", "-1", "99999999999999999999"):
        assert client.get(f"/admin/tenants/apikey/{bad}/history/").status_code < 500
