"""The official SDK client through the gateway over Streamable HTTP, with an SDK upstream server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from audit.models import AuditEvent
from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import DemoWorld

pytestmark = pytest.mark.django_db(transaction=True)


def sdk_client(url: str, secret: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)


async def _session(url: str, secret: str, mode: str) -> dict[str, Any]:
    async with sdk_client(url, secret, mode) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        added = await client.call_tool("demo.add", {"a": 271828, "b": 1000})
        failed = await client.call_tool("demo.fail", {"reason": "boom"})
        denied: MCPError | None = None
        try:
            await client.call_tool("demo.delete_everything", {"confirm": True})
        except MCPError as exc:
            denied = exc
        return {
            "version": client.protocol_version,
            "tools": tools,
            "added": added,
            "failed": failed,
            "denied": denied,
        }


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_sdk_client_lists_granted_tools_calls_one_and_is_refused_the_rest(mode: str, demo_world: DemoWorld) -> None:
    demo_world.grant("add", "echo", "fail")
    owner, owner_key = demo_world.owner, demo_world.key

    seen = asyncio.run(_session(f"{demo_world.gateway.url}/mcp", owner_key.secret, mode))

    assert seen["version"] == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert seen["tools"] == ["demo.add", "demo.echo", "demo.fail"]
    assert seen["added"].structured_content == {"result": 272828}
    assert seen["added"].is_error is False
    assert seen["failed"].is_error is True
    assert "fail" in seen["failed"].content[0].text
    assert seen["denied"] is not None and "not granted" in str(seen["denied"])
    events = _tool_call_events(owner, expected=3)
    outcomes = {event.target: event.outcome for event in events}
    assert outcomes == {
        "mcp_tool:demo.add": AuditEvent.Outcome.SUCCESS,
        "mcp_tool:demo.fail": AuditEvent.Outcome.FAILURE,
        "mcp_tool:demo.delete_everything": AuditEvent.Outcome.DENIED,
    }
    add_event = next(event for event in events if event.target == "mcp_tool:demo.add")
    assert add_event.actor == f"key:{owner_key.key.prefix}"
    canonical = json.dumps({"a": 271828, "b": 1000}, sort_keys=True, separators=(",", ":")).encode()
    assert add_event.details["arguments_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert add_event.details["duration_ms"] > 0
    assert "arguments" not in add_event.details and "271828" not in json.dumps(add_event.details)


def _tool_call_events(tenant: Tenant, expected: int) -> list[AuditEvent]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = list(AuditEvent.objects.filter(action="mcp.tool_call", tenant_id=tenant.pk))
        if len(events) >= expected:
            return events
        time.sleep(0.1)
    raise AssertionError(f"expected {expected} tool-call audit events, got {len(events)}")


def test_gateway_sends_the_stored_credential_not_the_clients_key(
    gateway: live.Server, mcp_upstream_http: live.Server, upstream_factory: Callable[..., UpstreamServer]
) -> None:
    wrong = upstream_factory("wrongcred", mcp_upstream_http.url, credential="Bearer not-the-token")
    assert wrong.health == UpstreamServer.Health.UNREACHABLE
    assert "401" in wrong.last_error or "nauthorized" in wrong.last_error or wrong.last_error


def test_raw_protocol_errors_carry_the_spec_codes(gateway: live.Server, owner_key: Issued) -> None:
    url = f"{gateway.url}/mcp"
    auth = {"Authorization": f"Bearer {owner_key.secret}", "Accept": "application/json, text/event-stream"}
    json_headers = {**auth, "Content-Type": "application/json"}
    parse = httpx.post(url, content=b"{not json", headers=json_headers)
    assert parse.status_code == 400 and parse.json()["error"]["code"] == -32700
    invalid = httpx.post(url, json={"jsonrpc": "1.0", "id": 1, "method": "x"}, headers=json_headers)
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == -32600
    no_session = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=json_headers)
    assert no_session.status_code == 400
    unknown = httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**json_headers, "Mcp-Session-Id": "feedface"},
    )
    assert unknown.status_code == 404
    init = httpx.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers=json_headers,
    )
    assert init.status_code == 200 and init.json()["result"]["protocolVersion"] == "2025-06-18"
    session = {**json_headers, "Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    method = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "nope/nothing"}, headers=session)
    assert method.json()["error"]["code"] == -32601
    params = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 5}}, headers=session
    )
    assert params.json()["error"]["code"] == -32602
    bad_version = httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 4, "method": "ping"},
        headers={**session, "MCP-Protocol-Version": "1999-01-01"},
    )
    assert bad_version.status_code == 400
    note = httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    assert note.status_code == 202 and note.content == b""
    not_acceptable = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 5, "method": "ping"}, headers={**session, "Accept": "text/html"}
    )
    assert not_acceptable.status_code == 406
    foreign = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers={**session, "Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    assert httpx.delete(url, headers=session).status_code == 200
    gone = httpx.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=session)
    assert gone.status_code == 404
    modern = {**json_headers, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "other"}
    mismatch = httpx.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 8,
            "method": "tools/call",
            "params": {
                "name": "demo.add",
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        },
        headers=modern,
    )
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
    anonymous = httpx.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers={"Accept": auth["Accept"]})
    assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
