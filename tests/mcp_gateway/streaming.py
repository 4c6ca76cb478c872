"""Raw-HTTP helpers against a live gateway: a session, a tools/call body, a stateless request, SSE parsing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.mcp_gateway.inprocess import META

ACCEPT = "application/json, text/event-stream"


def sse_events(lines: Iterator[str], deadline: float | None = None) -> Iterator[dict[str, str]]:
    """The events of an SSE body as dicts of their fields (comments skipped).

    Heartbeats keep a stream busy, so with a deadline a missing event fails instead of hanging.
    """
    event: dict[str, str] = {}
    for line in lines:
        if deadline is not None and time.monotonic() > deadline:
            raise AssertionError("the expected event did not arrive in time")
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
    if event:
        yield event


def initialize(url: str, secret: str, version: str = "2025-11-25") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret}", "Accept": ACCEPT}
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    created = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}, headers=headers
    )
    assert created.status_code == 200, created.text
    return {**headers, "Mcp-Session-Id": created.headers["mcp-session-id"], "MCP-Protocol-Version": version}


def call(name: str, arguments: dict[str, Any], request_id: int = 2, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def rpc(url: str, secret: str, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    """One stateless (2026-07-28) request, headers mirroring the body as the spec asks."""
    params = {**(params or {}), "_meta": META}
    headers = {
        "Authorization": f"Bearer {secret}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=headers)
