"""The admin: servers with health, the refresh action, tools with who may use them, recent calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_record
from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(transactional_db: None) -> Client:
    User.objects.create_superuser("alice", "alice@example.com", "correct horse battery staple")
    client = Client()
    client.login(username="alice", password="correct horse battery staple")
    return client


def test_admin_adds_a_server_discovers_its_tools_and_shows_who_may_use_them(
    admin_client: Client,
    mcp_upstream_http: live.Server,
    allow_loopback: None,
    grant: Callable[..., Any],
    owner: Tenant,
) -> None:
    response = admin_client.post(
        reverse("admin:mcp_upstreamserver_add"),
        {
            "name": "demo",
            "url": mcp_upstream_http.url,
            "transport": "streamable_http",
            "credential_header": "Authorization",
            "credential": "Bearer upstream-secret-token-123",
            "enabled": "on",
            "tools-TOTAL_FORMS": "0",
            "tools-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert "4 tool(s) discovered" in response.content.decode()
    server = UpstreamServer.objects.get(name="demo")
    assert server.health == UpstreamServer.Health.HEALTHY
    grant(owner, server, "echo")

    listing = admin_client.get(reverse("admin:mcp_upstreamserver_changelist")).content.decode()
    assert "Healthy" in listing
    tools = admin_client.get(reverse("admin:mcp_upstreamtool_changelist")).content.decode()
    assert "demo.echo" in tools and "owner" in tools and "nobody" in tools

    server.url = mcp_upstream_http.url.replace("/mcp", "/nothing-here")
    UpstreamServer.objects.filter(pk=server.pk).update(url=server.url)
    refreshed = admin_client.post(
        reverse("admin:mcp_upstreamserver_changelist"),
        {"action": "refresh_tools", "_selected_action": [server.pk]},
        follow=True,
    )
    assert "unreachable" in refreshed.content.decode()
    assert UpstreamServer.objects.get(pk=server.pk).health == UpstreamServer.Health.UNREACHABLE
    assert AuditEvent.objects.filter(action="mcp.server.refresh", outcome="failure", actor="user:alice").exists()


def test_recent_calls_list_only_tool_calls(admin_client: Client) -> None:
    audit_record(actor="key:sk-abc", action="mcp.tool_call", target="mcp_tool:demo.echo", details={"duration_ms": 4.2})
    audit_record(actor="user:alice", action="tenant.create", target="tenant:x")
    page = admin_client.get(reverse("admin:mcp_toolcallevent_changelist")).content.decode()
    assert "mcp_tool:demo.echo" in page and "4.2" in page
    assert "tenant:x" not in page
