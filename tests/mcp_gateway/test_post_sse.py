"""POST answers as SSE or JSON (MCP_POST_RESPONSE), and upstream progress relayed on the SSE answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gateway.models import UpstreamServer
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import gateway_env
from tests.mcp_gateway.streaming import call, initialize, sse_events

pytestmark = pytest.mark.django_db(transaction=True)

ACCEPT = "application/json, text/event-stream"


async def _call_with_progress(url: str, secret: str, mode: str) -> tuple[list[tuple[float, Any, Any]], Any]:
    seen: list[tuple[float, Any, Any]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
        result = await client.call_tool("demo.count_slowly", {"steps": 3}, progress_callback=progress)
    return seen, result


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_sdk_client_hears_the_upstream_tools_progress_through_the_gateway(
    mode: str, gateway: live.Server, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    seen, result = asyncio.run(_call_with_progress(f"{gateway.url}/mcp", owner_key.secret, mode))

    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert result.is_error is False
    assert result.content[0].text == "counted to 3"


def test_a_call_with_a_progress_token_is_answered_as_sse_with_event_ids(
    gateway: live.Server, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    url = f"{gateway.url}/mcp"
    session = initialize(url, owner_key.secret)

    with httpx.stream(
        "POST", url, json=call("demo.count_slowly", {"steps": 2}, token="tok-1"), headers=session, timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))

    primer, *messages = events
    assert primer["data"] == "" and primer["id"]  # 2025-11-25: an id to resume from before anything else
    bodies = [json.loads(event["data"]) for event in messages]
    assert [body.get("method") for body in bodies] == ["notifications/progress", "notifications/progress", None]
    assert [body["params"]["progressToken"] for body in bodies[:2]] == ["tok-1", "tok-1"]
    assert bodies[2]["id"] == 2 and bodies[2]["result"]["content"][0]["text"] == "counted to 2"
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids) and len({event_id.split("_")[0] for event_id in ids}) == 1

    plain = httpx.post(url, json=call("demo.echo", {"text": "hi"}, request_id=3), headers=session)
    assert plain.headers["content-type"] == "application/json"
    assert plain.json()["result"]["structuredContent"] == {"result": "hi"}


def test_a_2025_06_18_stream_has_ids_but_no_empty_priming_event(
    gateway: live.Server, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    url = f"{gateway.url}/mcp"
    session = initialize(url, owner_key.secret, version="2025-06-18")
    with httpx.stream(
        "POST", url, json=call("demo.count_slowly", {"steps": 1}, token=7), headers=session, timeout=30
    ) as response:
        events = list(sse_events(response.iter_lines()))
    assert all(event["data"] and event["id"] for event in events)
    assert json.loads(events[0]["data"])["params"] == {
        "progressToken": 7,
        "progress": 1.0,
        "total": 1.0,
        "message": "step 1",
    }


@pytest.mark.parametrize("mode", ["json", "sse"])
def test_mcp_post_response_forces_one_kind_of_answer(
    mode: str, session_tmp: Path, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    with live.daphne_server(session_tmp, **gateway_env(), MCP_POST_RESPONSE=mode) as server:
        url = f"{server.url}/mcp"
        session = initialize(url, owner_key.secret)
        with_token = httpx.post(url, json=call("demo.count_slowly", {"steps": 1}, token="t"), headers=session)
        ping = httpx.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=session)

    expected = "application/json" if mode == "json" else "text/event-stream"
    assert with_token.headers["content-type"].startswith(expected)
    assert ping.headers["content-type"].startswith(expected)
    if mode == "json":
        assert with_token.json()["result"]["content"][0]["text"] == "counted to 1"
    else:
        last = list(sse_events(iter(ping.text.splitlines())))[-1]
        assert json.loads(last["data"]) == {"jsonrpc": "2.0", "id": 9, "result": {}}


def test_a_long_quiet_tool_call_answered_as_sse_gets_heartbeats_until_its_answer(
    gateway: live.Server, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    # The test gateway beats every 0.5 s; this call stays quiet for ~0.9 s before each progress message.
    url = f"{gateway.url}/mcp"
    session = initialize(url, owner_key.secret)
    body = call("demo.count_slowly", {"steps": 2, "pause": 0.9}, token="slow")
    with httpx.stream("POST", url, json=body, headers=session, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())

    pings = [number for number, line in enumerate(lines) if line == ": ping"]
    assert len(pings) >= 2, lines
    answer = next(number for number, line in enumerate(lines) if '"counted to 2"' in line)
    assert all(number < answer for number in pings), "no heartbeat after the answer"
    assert [line for line in lines[answer + 1 :] if line.strip()] == []
