"""Grants narrowed per key, tenant isolation, tool-call quotas, virtual servers and key scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from audit.models import AuditEvent
from mcp_gateway import services
from mcp_gateway.models import UpstreamServer, UpstreamTool, VirtualServer
from tenants import services as tenant_services
from tenants.models import Quota, Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.streaming import rpc

pytestmark = pytest.mark.django_db(transaction=True)


def tool_names(url: str, secret: str) -> list[str]:
    response = rpc(url, secret, "tools/list")
    assert response.status_code == 200, response.text
    return [tool["name"] for tool in response.json()["result"]["tools"]]


def test_a_key_with_its_own_grants_is_narrowed_and_other_tenants_see_nothing(
    gateway: live.Server,
    demo: UpstreamServer,
    grant: Callable[..., Any],
    owner: Tenant,
    outsider: Tenant,
    owner_key: Issued,
    key_factory: Callable[..., Issued],
) -> None:
    narrow = key_factory(owner, "narrow")
    outsider_key = key_factory(outsider, "outsider key")
    grant(owner, demo)
    grant(owner, demo, "echo", key=narrow)
    url = f"{gateway.url}/mcp"

    assert tool_names(url, owner_key.secret) == ["demo.add", "demo.delete_everything", "demo.echo", "demo.fail"]
    assert tool_names(url, narrow.secret) == ["demo.echo"]
    assert tool_names(url, outsider_key.secret) == []
    refused = rpc(url, narrow.secret, "tools/call", {"name": "demo.add", "arguments": {"a": 1, "b": 1}})
    assert refused.json()["error"]["code"] == -32602
    assert "not granted to this API key" in refused.json()["error"]["message"]
    assert rpc(url, outsider_key.secret, "tools/call", {"name": "demo.echo", "arguments": {"text": "x"}}).json()[
        "error"
    ]["data"] == {"type": "permission_error", "code": "tool_not_granted"}


def test_tool_calls_per_minute_are_limited_per_tenant(
    gateway: live.Server, demo: UpstreamServer, grant: Callable[..., Any], owner: Tenant, owner_key: Issued
) -> None:
    grant(owner, demo)
    tenant_services.quota_save(quota=Quota(tenant=owner, tool_rpm_limit=2), actor="test")
    url = f"{gateway.url}/mcp"
    results = [
        rpc(url, owner_key.secret, "tools/call", {"name": "demo.echo", "arguments": {"text": "hi"}}) for _ in range(3)
    ]

    assert [("result" in r.json()) for r in results] == [True, True, False]
    error = results[2].json()["error"]
    assert error["code"] == -32029
    assert error["data"]["code"] == "tool_rpm_limit_exceeded"
    assert "2 tool calls per minute" in error["message"]


def test_a_virtual_server_exposes_only_its_bundle(
    gateway: live.Server, demo: UpstreamServer, grant: Callable[..., Any], owner: Tenant, owner_key: Issued
) -> None:
    grant(owner, demo)
    services.virtual_server_save(
        bundle=VirtualServer(name="safe"),
        tools=list(UpstreamTool.objects.filter(server=demo, name__in=["echo", "add"])),
        actor="test",
    )

    assert tool_names(f"{gateway.url}/mcp/safe", owner_key.secret) == ["demo.add", "demo.echo"]
    outside = rpc(f"{gateway.url}/mcp/safe", owner_key.secret, "tools/call", {"name": "demo.fail", "arguments": {}})
    assert outside.json()["error"]["code"] == -32602
    called = rpc(
        f"{gateway.url}/mcp/safe", owner_key.secret, "tools/call", {"name": "demo.add", "arguments": {"a": 1, "b": 2}}
    )
    assert called.json()["result"]["structuredContent"] == {"result": 3}
    assert rpc(f"{gateway.url}/mcp/nosuch", owner_key.secret, "tools/list").status_code == 404


def test_a_key_without_the_mcp_scope_is_refused(
    gateway: live.Server, owner: Tenant, key_factory: Callable[..., Issued]
) -> None:
    chat_only = key_factory(owner, "chat only", scopes=["chat"])
    response = rpc(f"{gateway.url}/mcp", chat_only.secret, "tools/list")
    assert response.status_code == 403
    assert response.json()["error"]["data"]["code"] == "scope_not_allowed"


def test_server_discover_and_the_audit_of_server_changes(
    gateway: live.Server, demo: UpstreamServer, owner_key: Issued
) -> None:
    discover = rpc(f"{gateway.url}/mcp", owner_key.secret, "server/discover").json()["result"]
    assert discover["supportedVersions"] == ["2026-07-28"]
    assert "tools" in discover["capabilities"]
    actions = set(AuditEvent.objects.filter(target="mcp_server:demo").values_list("action", flat=True))
    assert actions == {"mcp.server.create", "mcp.server.refresh"}
