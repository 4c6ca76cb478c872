"""Two upstreams offering one resource URI: each tenant sees and reads the one of a server it was granted."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer
from tenants.models import Tenant
from tests.keys import Issued
from tests.mcp_gateway.inprocess import modern_call

pytestmark = pytest.mark.django_db(transaction=True)

SHARED = "memo://shared/readme"


def _server(name: str, resources: list[dict[str, Any]]) -> UpstreamServer:
    """An upstream as discovery would have cached it; no call reaches it except the reads below."""
    server = services.server_save(server=UpstreamServer(name=name, url=f"http://127.0.0.1:9/{name}/mcp"), actor="test")
    UpstreamServer.objects.filter(pk=server.pk).update(resources=resources)
    return server


@pytest.fixture
def servers(allow_loopback: None, owner: Tenant, outsider: Tenant) -> None:
    alpha = _server("alpha", [{"uri": SHARED, "name": "readme", "description": "alpha's"}])
    beta = _server(
        "beta",
        [
            {"uri": SHARED, "name": "readme", "description": "beta's"},
            {"uri": "memo://beta/only", "name": "only"},
            {"uri": SHARED, "name": "readme", "description": "beta's second listing"},
        ],
    )
    services.grant_save(grant=ToolGrant(tenant=owner, server=beta), actor="test")  # beta only
    services.grant_save(grant=ToolGrant(tenant=outsider, server=alpha), actor="test")
    services.grant_save(grant=ToolGrant(tenant=outsider, server=beta), actor="test")


@pytest.fixture
def outsider_key(outsider: Tenant, key_factory: Any) -> Issued:
    return key_factory(outsider, "outsider key")


async def _listed(secret: str) -> list[tuple[str, str]]:
    answer = await modern_call(secret, "resources/list", {})
    return [(r["uri"], r.get("description", "")) for r in answer.json()["result"]["resources"]]


async def _read_from(secret: str, tenant: Tenant) -> str:
    """The server a resources/read of the shared URI went to (here unreachable: the audit names it)."""
    answer = await modern_call(secret, "resources/read", {"uri": SHARED})
    assert answer.json()["error"]["code"] == -32002, answer.json()
    await deferred_audit.flush()
    event = await AuditEvent.objects.filter(action="mcp.resource_read", tenant_id=tenant.pk).alatest("id")
    return str(event.details["server"])


async def test_a_uri_two_servers_offer_is_seen_and_read_from_the_granted_one(
    servers: None, owner: Tenant, owner_key: Issued, outsider: Tenant, outsider_key: Issued
) -> None:
    # The second server with the URI no longer hides it from a tenant granted only that server.
    assert await _listed(owner_key.secret) == [("memo://beta/only", ""), (SHARED, "beta's")]
    assert await _read_from(owner_key.secret, owner) == "beta"
    # Granted both: one entry per URI, deterministically the first server by name.
    assert await _listed(outsider_key.secret) == [("memo://beta/only", ""), (SHARED, "alpha's")]
    assert await _read_from(outsider_key.secret, outsider) == "alpha"
