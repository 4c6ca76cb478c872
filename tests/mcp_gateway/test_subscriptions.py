"""subscriptions/listen (2026-07-28): acknowledged filter, then list_changed when the catalogue a key sees changes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ToolsListChanged

from mcp_gateway.catalog_watch import CatalogWatch, Watcher
from mcp_gateway.models import UpstreamServer
from tenants.auth import key_authenticate_header
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import DemoWorld
from tests.mcp_gateway.streaming import sse_events

pytestmark = pytest.mark.django_db(transaction=True)

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


def test_listen_acknowledges_only_what_the_gateway_delivers_under_the_requests_id(
    gateway: live.Server, owner_key: Issued
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "sub-7",
        "method": "subscriptions/listen",
        "params": {
            "_meta": META,
            "notifications": {
                "toolsListChanged": True,
                "promptsListChanged": False,
                "resourceSubscriptions": ["a://b"],
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {owner_key.secret}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
    }
    with httpx.stream("POST", f"{gateway.url}/mcp", json=body, headers=headers, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        ack = next(sse_events(stream.iter_lines(), time.monotonic() + 30))
    assert "id" not in ack  # 2026-07-28 streams are not resumable
    assert json.loads(ack["data"]) == {
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {
            "_meta": {"io.modelcontextprotocol/subscriptionId": "sub-7"},
            "notifications": {"toolsListChanged": True},
        },
    }


async def _listen_through_a_change(url: str, secret: str, change: Callable[[], Any]) -> tuple[Any, Any]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    async with (
        Client(streamable_http_client(url, http_client=http), mode=MODERN, cache=None) as client,
        client.listen(tools_list_changed=True, resource_subscriptions=["memo://readme"]) as subscription,
    ):
        await sync_to_async(change)()
        event = await asyncio.wait_for(anext(subscription), 30)
        return subscription.honored, event


@pytest.mark.skipif(not settings.REDIS_URL, reason="the server process hears of the change through the shared epoch")
def test_sdk_client_listening_hears_tools_list_changed_when_its_tenant_is_granted_a_tool(demo_world: DemoWorld) -> None:
    demo_world.grant("echo")

    honored, event = asyncio.run(
        _listen_through_a_change(
            f"{demo_world.gateway.url}/mcp", demo_world.key.secret, lambda: demo_world.grant("add")
        )
    )

    assert honored.tools_list_changed is True and not honored.resource_subscriptions
    assert event == ToolsListChanged()


def test_a_grant_change_is_announced_only_to_streams_whose_lists_changed(
    mcp_upstream_http: live.Server,
    upstream_factory: Callable[..., UpstreamServer],
    grant: Callable[..., Any],
    owner: Tenant,
    owner_key: Issued,
    outsider: Tenant,
    key_factory: Callable[..., Issued],
) -> None:
    demo = upstream_factory("demo", mcp_upstream_http.url)
    grant(owner, demo, "echo")
    outsider_key = key_factory(outsider, "outsider key")

    async def scenario() -> dict[str, list[list[str]]]:
        heard: dict[str, list[list[str]]] = {"owner": [], "outsider": [], "owner-prompts-only": []}
        watch = CatalogWatch()
        for name, issued, kinds in (
            ("owner", owner_key, None),
            ("outsider", outsider_key, None),
            ("owner-prompts-only", owner_key, frozenset({"prompts"})),
        ):
            key = await key_authenticate_header(f"Bearer {issued.secret}", ip=None, endpoint="mcp")

            async def deliver(changed: list[str], name: str = name) -> None:
                heard[name].append(changed)

            watcher = Watcher(key, "", deliver)
            if kinds is not None:
                watcher.kinds = kinds
            await watch.add(watcher)
        await sync_to_async(grant)(owner, demo, "add")
        await watch.check()
        await watch.check()  # nothing changed since: nothing more is said
        return heard

    heard = asyncio.run(scenario())

    assert heard == {"owner": [["tools"]], "outsider": [], "owner-prompts-only": []}
