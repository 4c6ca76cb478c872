"""Stateless requests mirror the body in headers; a name that is not plain ASCII arrives base64-wrapped."""

from __future__ import annotations

import pytest
from mcp.shared.inbound import encode_header_value

from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer
from tenants.models import Tenant
from tests.keys import Issued
from tests.mcp_gateway.inprocess import META, modern_headers, request, rpc

pytestmark = pytest.mark.django_db(transaction=True)

URI = "memo://café/notes"


@pytest.fixture
def cafe(allow_loopback: None, owner: Tenant) -> UpstreamServer:
    """A server offering a resource with a non-ASCII URI (unreachable: a read reaching it is an upstream error)."""
    server = services.server_save(server=UpstreamServer(name="cafe", url="http://127.0.0.1:9/mcp"), actor="test")
    UpstreamServer.objects.filter(pk=server.pk).update(resources=[{"uri": URI, "name": "notes"}])
    services.grant_save(grant=ToolGrant(tenant=owner, server=server), actor="test")
    return server


async def _read(secret: str, header_value: str) -> dict[str, object]:
    headers = [(n, v) for n, v in modern_headers(secret, "resources/read") if n != b"mcp-name"]
    headers.append((b"mcp-name", header_value.encode("latin-1")))
    answer = await request("POST", "/mcp", headers, rpc("resources/read", {"uri": URI, "_meta": META}))
    return {"status": answer.status, **answer.json()["error"]}


async def test_a_uri_the_sdk_sends_base64_wrapped_in_mcp_name_matches_the_body(
    cafe: UpstreamServer, owner_key: Issued
) -> None:
    wrapped = encode_header_value(URI)
    assert wrapped.startswith("=?base64?")
    # Past the header check, to the (unreachable) upstream.
    assert (await _read(owner_key.secret, wrapped))["code"] == -32002
    # A header that does not decode to the body's URI is still a mismatch.
    for value in ("=?base64?bm90IGl0?=", "=?base64?%%%?=", "memo://caf"):
        refused = await _read(owner_key.secret, value)
        assert refused["status"] == 400 and refused["code"] == -32020
