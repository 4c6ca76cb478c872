"""Saving a row as it is stored, through any audited service, writes nothing and records nothing.

A re-saved admin form or a re-loaded config must not fill the audit trail with empty
changes, move ``updated_at`` or drop caches; a real change still does all three.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from mcp_gateway import services as mcp
from mcp_gateway.models import SsrfAllowEntry, ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from routing import services as routing
from routing.models import ModelDeployment, RouteGroup
from tenants import services as tenants
from tenants.models import Membership, Quota, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_servers_allowed(settings: Any) -> None:
    settings.SSRF_ALLOWLIST = ["127.0.0.1"]


def _tenant() -> Tenant:
    return tenants.tenant_save(tenant=Tenant(slug="acme", name="Acme"), actor="test")


def _server() -> UpstreamServer:
    return mcp.server_save(server=UpstreamServer(name="files", url="http://127.0.0.1:9/mcp"), actor="test")


def _made(kind: str) -> tuple[Any, Callable[..., Any], str]:
    """A stored row of ``kind``, the service that saves it, and the field a real change sets."""
    if kind == "tenant":
        return _tenant(), lambda row: tenants.tenant_save(tenant=row, actor="test"), "name"
    if kind == "api_key":
        key, _ = tenants.api_key_create(tenant=_tenant(), name="ci", actor="test")
        return key, lambda row: tenants.api_key_update(api_key=row, actor="test"), "name"
    if kind == "quota":
        quota = tenants.quota_save(quota=Quota(tenant=_tenant(), rpm_limit=10), actor="test")
        return quota, lambda row: tenants.quota_save(quota=row, actor="test"), "rpm_limit"
    if kind == "membership":
        user = get_user_model().objects.create_user("dev", password="x" * 16)
        made = Membership(tenant=_tenant(), user=user, role=Membership.Role.VIEWER)
        membership = tenants.membership_save(membership=made, actor="test")
        return membership, lambda row: tenants.membership_save(membership=row, actor="test"), "role"
    if kind == "deployment":
        made = ModelDeployment(model_name="gpt-4o", litellm_model="openai/gpt-4o", api_key="sk-upstream")
        deployment = routing.deployment_save(deployment=made, actor="test")
        return deployment, lambda row: routing.deployment_save(deployment=row, actor="test"), "enabled"
    if kind == "route_group":
        group = routing.route_group_save(group=RouteGroup(model_name="m"), actor="test")
        return group, lambda row: routing.route_group_save(group=row, actor="test"), "num_retries"
    if kind == "mcp_server":
        return _server(), lambda row: mcp.server_save(server=row, actor="test"), "enabled"
    if kind == "grant":
        grant = mcp.grant_save(grant=ToolGrant(tenant=_tenant(), server=_server()), actor="test")
        return grant, lambda row: mcp.grant_save(grant=row, actor="test"), "tool"
    if kind == "virtual_server":
        bundle = mcp.virtual_server_save(bundle=VirtualServer(name="bundle"), actor="test")
        return bundle, lambda row: mcp.virtual_server_save(bundle=row, actor="test"), "enabled"
    if kind == "ssrf_allow":
        entry = mcp.allow_entry_save(entry=SsrfAllowEntry(value="10.0.0.0/8"), actor="test")
        return entry, lambda row: mcp.allow_entry_save(entry=row, actor="test"), "note"
    raise AssertionError(kind)


CHANGED: dict[str, Any] = {
    "name": "renamed",
    "rpm_limit": 20,
    "role": Membership.Role.DEVELOPER,
    "num_retries": 4,
    "enabled": False,
    "tool": "read_file",
    "note": "office network",
}
KINDS = [
    "tenant",
    "api_key",
    "quota",
    "membership",
    "deployment",
    "route_group",
    "mcp_server",
    "grant",
    "virtual_server",
    "ssrf_allow",
]


@pytest.mark.parametrize("kind", KINDS)
def test_saving_a_row_as_stored_writes_no_event_and_leaves_the_row_alone(kind):
    row, save, field = _made(kind)
    fresh = type(row).objects.get(pk=row.pk)
    events = AuditEvent.objects.count()
    stored_columns = type(row).objects.filter(pk=row.pk).values().get()

    save(fresh)

    assert AuditEvent.objects.count() == events
    assert type(row).objects.filter(pk=row.pk).values().get() == stored_columns  # updated_at did not move

    setattr(fresh, field, CHANGED[field])
    save(fresh)

    event = AuditEvent.objects.order_by("-id").first()
    assert AuditEvent.objects.count() == events + 1
    assert event is not None and event.action.endswith(".change")
    assert field in event.details["changes"]


def test_a_bundle_whose_tools_change_alone_is_recorded():
    bundle = mcp.virtual_server_save(bundle=VirtualServer(name="bundle"), actor="test")
    tool = UpstreamTool.objects.create(server=_server(), name="read_file")
    events = AuditEvent.objects.count()

    mcp.virtual_server_save(bundle=VirtualServer.objects.get(pk=bundle.pk), tools=[tool], actor="test")
    mcp.virtual_server_save(bundle=VirtualServer.objects.get(pk=bundle.pk), tools=[tool], actor="test")

    recorded = list(AuditEvent.objects.filter(pk__gt=0).order_by("id")[events:])
    assert [event.action for event in recorded] == ["mcp.virtual_server.change"]
    assert recorded[0].details["changes"]["tools"] == {"before": [], "after": [str(tool)]}
