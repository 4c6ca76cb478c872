"""DNS-rebinding defences of the MCP endpoints: the Host header must be allowed, and so must Origin."""

from __future__ import annotations

import httpx
import pytest

from tests import live
from tests.keys import Issued

pytestmark = pytest.mark.django_db(transaction=True)

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.mark.parametrize("path", ["/mcp", "/mcp/sse", "/mcp/messages?session_id=abc"])
def test_a_host_outside_allowed_hosts_is_refused_with_a_json_rpc_error(
    path: str, gateway: live.Server, owner_key: Issued
) -> None:
    headers = {
        "Authorization": f"Bearer {owner_key.secret}",
        "Accept": "application/json, text/event-stream",
        "Host": "rebound.attacker.example",
    }
    method = "GET" if path.endswith("/sse") else "POST"
    refused = httpx.request(method, f"{gateway.url}{path}", json=PING, headers=headers)

    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == -32600
    assert "rebound.attacker.example" in error["message"] and "ALLOWED_HOSTS" in error["message"]


def test_allowed_hosts_with_a_port_and_in_any_case_are_served(gateway: live.Server, owner_key: Issued) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}"):
        response = httpx.post(
            f"{gateway.url}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
            headers={
                "Authorization": f"Bearer {owner_key.secret}",
                "Accept": "application/json, text/event-stream",
                "Host": host,
            },
        )
        assert response.status_code == 200, (host, response.text)


def test_an_origin_of_another_site_is_refused_even_with_an_allowed_host(
    gateway: live.Server, owner_key: Issued
) -> None:
    refused = httpx.post(
        f"{gateway.url}/mcp",
        json=PING,
        headers={
            "Authorization": f"Bearer {owner_key.secret}",
            "Accept": "application/json, text/event-stream",
            "Origin": "http://rebound.attacker.example",
        },
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == -32600
