"""Tenant admins in the MCP admin: their tenant's grants, tools and recent calls only; tenant-wide grants
only on servers open for self-service; every write audited. Also the write-only server credential."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_record
from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer, UpstreamTool
from tenants import services as tenant_services
from tenants.models import ApiKey, Membership, Tenant
from tests.keys import Issued

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class World:
    admin: Client  # tenant admin of "owner"
    open: UpstreamServer  # open for tenant self-service
    closed: UpstreamServer  # granted to owner and outsider by the platform
    hidden: UpstreamServer  # neither open nor granted to owner
    own_key: ApiKey
    foreign_key: ApiKey
    platform_grant: ToolGrant  # owner → closed.*
    foreign_grant: ToolGrant  # outsider → open.echo


def server(name: str, **fields: Any) -> UpstreamServer:
    made = services.server_save(server=UpstreamServer(name=name, url=f"http://127.0.0.1:9/{name}", **fields), actor="t")
    UpstreamTool.objects.create(server=made, name="echo", description=f"echo on {name}")
    return made


@pytest.fixture
def world(
    allow_loopback: None, owner: Tenant, outsider: Tenant, key_factory: Callable[..., Issued], settings: Any
) -> World:
    user = User.objects.create_user("tadmin", password="pw-for-tests-only")
    tenant_services.membership_save(
        membership=Membership(user=user, tenant=owner, role=Membership.Role.TENANT_ADMIN), actor="test"
    )
    client = Client()
    assert client.login(username="tadmin", password="pw-for-tests-only")
    opened, closed, hidden = server("opened", tenant_self_service=True), server("closed"), server("hidden")
    platform_grant = services.grant_save(grant=ToolGrant(tenant=owner, server=closed), actor="platform")
    services.grant_save(grant=ToolGrant(tenant=outsider, server=closed), actor="platform")
    foreign_grant = services.grant_save(grant=ToolGrant(tenant=outsider, server=opened, tool="echo"), actor="platform")
    services.grant_save(grant=ToolGrant(tenant=outsider, server=hidden), actor="platform")
    return World(
        client,
        opened,
        closed,
        hidden,
        key_factory(owner, "own key").key,
        key_factory(outsider, "foreign key").key,
        platform_grant,
        foreign_grant,
    )


def change_url(model: str, pk: int) -> str:
    return reverse(f"admin:mcp_{model}_change", args=[pk])


def test_tenant_admin_sees_only_their_tenants_grants_tools_and_calls(world: World, owner: Tenant, outsider: Tenant):
    audit_record(actor="key:own", action="mcp.tool_call", target="mcp_tool:closed.own-call", tenant_id=owner.pk)
    audit_record(actor="key:frgn", action="mcp.tool_call", target="mcp_tool:closed.foreign-call", tenant_id=outsider.pk)
    admin = world.admin

    grants = admin.get(reverse("admin:mcp_toolgrant_changelist"))
    assert grants.status_code == 200
    assert [g.pk for g in grants.context["cl"].result_list] == [world.platform_grant.pk]
    assert "outsider" not in grants.content.decode()
    assert admin.get(change_url("toolgrant", world.foreign_grant.pk)).status_code == 403

    calls = admin.get(reverse("admin:mcp_toolcallevent_changelist")).content.decode()
    assert "closed.own-call" in calls and "closed.foreign-call" not in calls
    foreign_call = AuditEvent.objects.get(target="mcp_tool:closed.foreign-call")
    assert admin.get(change_url("toolcallevent", foreign_call.pk)).status_code == 403

    tools = admin.get(reverse("admin:mcp_upstreamtool_changelist"))
    assert sorted(str(t) for t in tools.context["cl"].result_list) == ["closed.echo", "opened.echo"]
    page = tools.content.decode()
    assert "owner" in page and "outsider" not in page  # who may use a tool: only their own tenant shows

    assert admin.get(reverse("admin:mcp_upstreamserver_changelist")).status_code == 403
    assert admin.get(reverse("admin:mcp_upstreamserver_add")).status_code == 403
    assert admin.get(reverse("admin:mcp_ssrfallowentry_changelist")).status_code == 403


def grant_form(tenant: Tenant, server: UpstreamServer, tool: str = "*", key: ApiKey | None = None) -> dict[str, Any]:
    return {"tenant": tenant.pk, "server": server.pk, "tool": tool, "api_key": key.pk if key else ""}


def test_tenant_admin_grants_self_service_tools_and_narrows_keys_and_every_write_is_audited(
    world: World, owner: Tenant, outsider: Tenant
):
    admin, add = world.admin, reverse("admin:mcp_toolgrant_add")

    assert admin.post(add, grant_form(owner, world.open)).status_code == 302
    made = ToolGrant.objects.get(tenant=owner, server=world.open, api_key=None)
    created = AuditEvent.objects.get(action="mcp.grant.create", target=f"mcp_grant:{made.pk}")
    assert created.actor == "user:tadmin" and created.tenant_id == owner.pk and created.details["self_service"]

    refused = admin.post(add, grant_form(owner, world.closed, "echo"))
    assert refused.status_code == 200 and "not open for tenant self-service" in refused.content.decode()
    assert not ToolGrant.objects.filter(tenant=owner, server=world.closed, tool="echo").exists()

    assert admin.post(add, grant_form(owner, world.closed, "echo", key=world.own_key)).status_code == 302
    assert ToolGrant.objects.filter(api_key=world.own_key, server=world.closed, tool="echo").exists()

    for forged in (
        grant_form(outsider, world.open, "echo"),  # another tenant
        grant_form(owner, world.open, "echo", key=world.foreign_key),  # another tenant's key
        grant_form(owner, world.hidden),  # a server neither open nor granted to them
    ):
        response = admin.post(add, forged)
        assert response.status_code == 200 and response.context["adminform"].form.errors
    assert ToolGrant.objects.filter(tenant=owner).count() == 3
    assert not ToolGrant.objects.filter(api_key=world.foreign_key).exists()

    delete = reverse("admin:mcp_toolgrant_delete", args=[world.platform_grant.pk])
    assert admin.post(delete, {"post": "yes"}).status_code == 403  # the platform's grant stays
    assert ToolGrant.objects.filter(pk=world.platform_grant.pk).exists()
    foreign = reverse("admin:mcp_toolgrant_delete", args=[world.foreign_grant.pk])
    assert admin.post(foreign, {"post": "yes"}).status_code == 403
    assert ToolGrant.objects.filter(pk=world.foreign_grant.pk).exists()

    changelist = reverse("admin:mcp_toolgrant_changelist")
    mixed = {"action": "delete_selected", "post": "yes", "_selected_action": [made.pk, world.platform_grant.pk]}
    assert admin.post(changelist, mixed).status_code == 403  # all or nothing: neither is deleted
    assert ToolGrant.objects.filter(pk__in=[made.pk, world.platform_grant.pk]).count() == 2

    own = reverse("admin:mcp_toolgrant_delete", args=[made.pk])
    assert admin.post(own, {"post": "yes"}).status_code == 302
    assert not ToolGrant.objects.filter(pk=made.pk).exists()
    deleted = AuditEvent.objects.get(action="mcp.grant.delete", target=f"mcp_grant:{made.pk}")
    assert deleted.actor == "user:tadmin" and deleted.tenant_id == owner.pk


def test_the_service_refuses_a_tenant_wide_self_service_grant_on_a_closed_server(world: World, owner: Tenant):
    with pytest.raises(PermissionDenied):
        services.grant_save(grant=ToolGrant(tenant=owner, server=world.hidden), actor="x", self_service=True)
    with pytest.raises(PermissionDenied):
        services.grant_delete(grant=world.platform_grant, actor="x", self_service=True)
    assert ToolGrant.objects.filter(pk=world.platform_grant.pk).exists()
    assert not ToolGrant.objects.filter(tenant=owner, server=world.hidden).exists()


def test_server_credential_is_write_only_kept_when_blank_and_cleared_on_request(allow_loopback: None):
    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")
    client = Client()
    assert client.login(username="alice", password="correct horse battery staple")
    made = server("keeper", credential="Bearer very-secret-upstream")
    form = {
        "name": "keeper",
        "url": made.url,
        "transport": "streamable_http",
        "credential_header": "Authorization",
        "credential": "",
        "enabled": "on",
        "tools-TOTAL_FORMS": "0",
        "tools-INITIAL_FORMS": "0",
    }
    url = change_url("upstreamserver", made.pk)
    assert "very-secret-upstream" not in client.get(url).content.decode()
    assert client.post(url, {**form, "tenant_self_service": "on"}).status_code == 302
    made.refresh_from_db()
    assert made.credential == "Bearer very-secret-upstream" and made.tenant_self_service
    assert client.post(url, {**form, "clear_credential": "on"}).status_code == 302
    made.refresh_from_db()
    assert made.credential == "" and not made.tenant_self_service
    changes = [e.details["changes"] for e in AuditEvent.objects.filter(action="mcp.server.change").order_by("id")]
    assert changes[0] == {"tenant_self_service": {"before": False, "after": True}}
    assert changes[1]["credential"] == {"before": "(set)", "after": "(changed)"}
    assert "very-secret-upstream" not in str(changes)
