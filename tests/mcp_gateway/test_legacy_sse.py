"""The official SDK client over the legacy HTTP+SSE transport, also with the stream and POSTs on different processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import DemoWorld, gateway_env

pytestmark = pytest.mark.django_db(transaction=True)


async def _sse_session(sse_url: str, secret: str, rewrite_to: str | None = None) -> dict[str, Any]:
    transport = sse_client(sse_url, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    if rewrite_to is not None:
        transport = _posting_to(sse_url, secret, rewrite_to)
    async with Client(transport, mode="legacy", cache=None) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        echoed = await client.call_tool("demo.echo", {"text": "over sse"})
        denied: MCPError | None = None
        try:
            await client.call_tool("demo.delete_everything", {})
        except MCPError as exc:
            denied = exc
        return {"version": client.protocol_version, "tools": tools, "echoed": echoed, "denied": denied}


def _posting_to(sse_url: str, secret: str, other_base: str) -> Any:
    """An SDK SSE transport whose POSTs go to another server process than the one holding the stream."""
    from mcp.shared._httpx_utils import create_mcp_http_client

    def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
        client = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        stream_base = sse_url.rsplit("/mcp/", 1)[0]

        async def redirect_posts(request: Any) -> None:
            if request.method == "POST":
                request.url = request.url.copy_with(
                    port=int(other_base.rsplit(":", 1)[1]), host=other_base.split("//")[1].split(":")[0]
                )

        assert stream_base
        client.event_hooks["request"].append(redirect_posts)
        return client

    return sse_client(sse_url, headers={"Authorization": f"Bearer {secret}"}, timeout=10, httpx_client_factory=factory)


def test_sdk_client_over_legacy_sse_gets_replies_on_the_stream(demo_world: DemoWorld) -> None:
    demo_world.grant("echo", "add")

    seen = asyncio.run(_sse_session(f"{demo_world.gateway.url}/mcp/sse", demo_world.key.secret))

    assert seen["version"] == "2025-11-25"  # the SDK offers its newest handshake version over SSE too
    assert seen["tools"] == ["demo.add", "demo.echo"]
    assert seen["echoed"].structured_content == {"result": "over sse"}
    assert seen["denied"] is not None and "not granted" in str(seen["denied"])


def test_gateway_federates_an_upstream_that_speaks_legacy_sse(
    gateway: live.Server,
    mcp_upstream_sse: live.Server,
    upstream_factory: Callable[..., UpstreamServer],
    grant: Callable[..., Any],
    owner: Tenant,
    owner_key: Issued,
) -> None:
    demo = upstream_factory("demo", mcp_upstream_sse.url, transport="sse")
    assert demo.health == UpstreamServer.Health.HEALTHY, demo.last_error
    grant(owner, demo)

    seen = asyncio.run(_sse_session(f"{gateway.url}/mcp/sse", owner_key.secret))

    assert "demo.delete_everything" in seen["tools"]
    assert seen["echoed"].structured_content == {"result": "over sse"}


def test_messages_for_an_unknown_session_or_another_key_are_refused(
    gateway: live.Server, owner_key: Issued, key_factory: Callable[..., Issued], outsider: Tenant
) -> None:
    other = key_factory(outsider, "other")
    headers = {"Authorization": f"Bearer {owner_key.secret}"}
    missing = httpx.post(
        f"{gateway.url}/mcp/messages?session_id=abc123",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers=headers,
    )
    assert missing.status_code == 404
    with httpx.stream("GET", f"{gateway.url}/mcp/sse", headers=headers, timeout=10) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: endpoint"
        endpoint = next(lines).removeprefix("data: ")
        stolen = httpx.post(
            f"{gateway.url}{endpoint}",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {other.secret}"},
        )
        assert stolen.status_code == 404
        malformed = httpx.post(f"{gateway.url}{endpoint}", content=b"[oops", headers=headers)
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == -32700
        accepted = httpx.post(
            f"{gateway.url}{endpoint}", json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=headers
        )
        assert accepted.status_code == 202
        for line in lines:
            if line.startswith("data: "):
                assert line == 'data: {"jsonrpc":"2.0","id":7,"result":{}}'
                break


@pytest.mark.skipif(
    not settings.REDIS_URL, reason="a stream on one process and POSTs on another need the Redis channel layer"
)
def test_replies_reach_a_stream_held_by_another_server_process(demo_world: DemoWorld, session_tmp: Path) -> None:
    demo_world.grant("echo", "add")
    gateway = demo_world.gateway
    with live.daphne_server(session_tmp, **gateway_env()) as second:
        posts_before = gateway.log.read_text().count("POST /mcp/messages")
        seen = asyncio.run(_sse_session(f"{gateway.url}/mcp/sse", demo_world.key.secret, rewrite_to=second.url))
        assert seen["echoed"].structured_content == {"result": "over sse"}
        assert second.log.read_text().count("POST /mcp/messages") >= 3
        assert gateway.log.read_text().count("POST /mcp/messages") == posts_before
