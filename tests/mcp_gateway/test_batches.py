"""JSON-RPC batches are bounded in length and in answer size, and never stall the event loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer, UpstreamTool
from tenants.models import Tenant
from tests.keys import Issued
from tests.mcp_gateway.inprocess import auth_headers, request, rpc

pytestmark = pytest.mark.django_db(transaction=True)


async def _session(secret: str) -> list[tuple[bytes, bytes]]:
    """The headers of a 2025-03-26 session, the one version with batches."""
    params = {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    answer = await request("POST", "/mcp", auth_headers(secret), rpc("initialize", params))
    assert answer.status == 200, answer.body
    return auth_headers(
        secret, mcp_session_id=answer.headers[b"mcp-session-id"].decode(), mcp_protocol_version="2025-03-26"
    )


def _pings(count: int) -> bytes:
    return json.dumps([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(count)]).encode()


async def _worst_lag(stop: asyncio.Event) -> float:
    """The longest the loop took to come back to a 1 ms sleep, until ``stop``."""
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - started - 0.001)
    return worst


@pytest.mark.serial  # a bound on time
async def test_a_200000_message_batch_is_refused_at_once_and_the_loop_stays_responsive(owner_key: Issued) -> None:
    headers = await _session(owner_key.secret)
    body = _pings(200_000)
    assert len(body) > 9_000_000
    stop = asyncio.Event()
    probe = asyncio.ensure_future(_worst_lag(stop))
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    answer = await request("POST", "/mcp", headers, body, chunk=65536)
    elapsed = time.perf_counter() - started
    stop.set()
    lag = await probe

    assert answer.status == 400
    error = answer.json()["error"]
    assert error["code"] == -32600 and error["data"] == {
        "type": "invalid_request_error",
        "code": "batch_too_large",
        "limit": 100,
    }
    # Parsed whole and answered item by item this took seconds, with the loop held all along.
    assert elapsed < 1.0, elapsed
    assert lag < 0.1, lag


async def test_a_batch_past_the_limit_is_refused_without_being_read_to_its_end(owner_key: Issued) -> None:
    headers = await _session(owner_key.secret)
    body = _pings(101)[:-1] + b", this is never read"
    answer = await request("POST", "/mcp", headers, body)
    assert answer.status == 400 and answer.json()["error"]["data"]["code"] == "batch_too_large"


async def test_a_batch_at_the_limit_is_answered_in_order(owner_key: Issued) -> None:
    headers = await _session(owner_key.secret)
    answer = await request("POST", "/mcp", headers, _pings(100))
    assert answer.status == 200
    assert answer.json() == [{"jsonrpc": "2.0", "id": i, "result": {}} for i in range(100)]


@pytest.fixture
def many_tools(allow_loopback: None, owner: Tenant) -> UpstreamServer:
    """Forty tools with long descriptions granted to the owner: a tools/list answer of about 12 KB."""
    server = services.server_save(server=UpstreamServer(name="big", url="http://127.0.0.1:9/mcp"), actor="test")
    for index in range(40):
        UpstreamTool.objects.create(server=server, name=f"tool_{index:02}", description="d" * 250)
    services.grant_save(grant=ToolGrant(tenant=owner, server=server), actor="test")
    return server


async def test_a_batch_answer_stays_within_the_response_budget_and_the_rest_is_not_run(
    many_tools: UpstreamServer, owner: Tenant, owner_key: Issued, settings: Any
) -> None:
    settings.MCP_MAX_RESPONSE_BYTES = 40_000
    headers = await _session(owner_key.secret)
    batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/list"} for i in range(6)]
    batch.append({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
    call = {"name": "big.tool_00", "arguments": {}}
    batch.append({"jsonrpc": "2.0", "id": "call", "method": "tools/call", "params": call})

    answer = await request("POST", "/mcp", headers, json.dumps(batch).encode())

    assert answer.status == 200 and len(answer.body) <= 40_000
    items = answer.json()
    assert [item["id"] for item in items] == [0, 1, 2, 3, 4, 5, "call"]  # no answer to the notification
    answered = [item for item in items if "result" in item]
    assert len(answered) == 3 and all(len(item["result"]["tools"]) == 40 for item in answered)
    for item in items[3:]:
        assert item["error"]["code"] == -32003
        assert item["error"]["data"] == {"type": "invalid_request_error", "code": "response_too_large", "limit": 40_000}
    # The tools/call after the budget ran out was answered without being run.
    await deferred_audit.flush()
    assert not await AuditEvent.objects.filter(action="mcp.tool_call", tenant_id=owner.pk).aexists()


async def test_a_single_answer_past_the_response_budget_is_an_error(
    many_tools: UpstreamServer, owner_key: Issued, settings: Any
) -> None:
    settings.MCP_MAX_RESPONSE_BYTES = 5_000
    headers = await _session(owner_key.secret)
    answer = await request("POST", "/mcp", headers, rpc("tools/list", request_id=9))
    assert answer.status == 200
    assert answer.json()["id"] == 9 and answer.json()["error"]["code"] == -32003
