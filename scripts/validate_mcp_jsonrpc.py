#!/usr/bin/env python
"""Check an MCP gateway's Streamable HTTP endpoint end to end: JSON-RPC errors, sessions, 2026 stateless mode.

Usage: validate_mcp_jsonrpc.py https://gateway.example/mcp --key sk-... [--tool demo.echo --arguments '{"text":"hi"}']

Runs raw HTTP checks for the spec's error codes and statuses, then the official ``mcp``
SDK client in handshake and 2026-07-28 modes. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

ACCEPT = "application/json, text/event-stream"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
failures: list[str] = []


def check(name: str, condition: Callable[[], bool], detail: Callable[[], str] = lambda: "") -> None:
    try:
        ok = condition()
    except Exception as exc:  # a check that raises has failed; say why
        ok, extra = False, f"{type(exc).__name__}: {exc}"
    else:
        extra = "" if ok else detail()
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({extra})" if extra else ""))
    if not ok:
        failures.append(name)


def error_code(response: httpx.Response) -> Any:
    return response.json().get("error", {}).get("code")


def raw_checks(http: httpx.Client, url: str, tool: str | None, arguments: dict[str, Any]) -> None:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    r = http.post(url, content=b"{broken", headers=headers)
    check("malformed JSON -> 400 / -32700", lambda: r.status_code == 400 and error_code(r) == -32700, lambda: r.text)
    r = http.post(url, json={"jsonrpc": "2.0", "id": 1}, headers=headers)
    check("invalid request -> -32600", lambda: error_code(r) == -32600, lambda: r.text)
    r = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    check("request without session -> 400", lambda: r.status_code == 400, lambda: str(r.status_code))
    r = http.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={**headers, "Mcp-Session-Id": "0" * 32}
    )
    check("unknown session -> 404", lambda: r.status_code == 404, lambda: str(r.status_code))
    r = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**headers, "Accept": "text/html"})
    check("Accept without JSON and SSE -> 406", lambda: r.status_code == 406, lambda: str(r.status_code))
    r = http.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**headers, "Origin": "http://evil.invalid"}
    )
    check("foreign Origin -> 403", lambda: r.status_code == 403, lambda: str(r.status_code))
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "validate", "version": "1"}}
    r = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}, headers=headers)
    session = r.headers.get("mcp-session-id", "")
    check("initialize -> result and Mcp-Session-Id", lambda: bool(session) and "result" in r.json(), lambda: r.text)
    s = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    r = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=s)
    check("notification -> 202", lambda: r.status_code == 202, lambda: str(r.status_code))
    r = http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "no/such/method"}, headers=s)
    check("unknown method -> -32601", lambda: error_code(r) == -32601, lambda: r.text)
    r = http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 7}}, headers=s)
    check("bad params -> -32602", lambda: error_code(r) == -32602, lambda: r.text)
    r = http.post(
        url, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers={**s, "MCP-Protocol-Version": "1900-01-01"}
    )
    check("unsupported MCP-Protocol-Version -> 400", lambda: r.status_code == 400, lambda: str(r.status_code))
    r = http.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers=s)
    check("tools/list in the session", lambda: isinstance(r.json()["result"]["tools"], list), lambda: r.text)
    if tool:
        call = {"name": tool, "arguments": arguments}
        r = http.post(url, json={"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": call}, headers=s)
        check(f"tools/call {tool}", lambda: "result" in r.json(), lambda: r.text)
    r = http.delete(url, headers=s)
    check("DELETE ends the session", lambda: r.status_code in (200, 204), lambda: str(r.status_code))
    r = http.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=s)
    check("ended session -> 404", lambda: r.status_code == 404, lambda: str(r.status_code))
    modern = {**headers, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"}
    r = http.post(
        url, json={"jsonrpc": "2.0", "id": 8, "method": "server/discover", "params": {"_meta": META}}, headers=modern
    )
    check("2026-07-28 server/discover", lambda: "2026-07-28" in r.json()["result"]["supportedVersions"], lambda: r.text)
    r = http.post(
        url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": META}}, headers=modern
    )
    check(
        "2026-07-28 Mcp-Method mismatch -> 400 / -32020",
        lambda: r.status_code == 400 and error_code(r) == -32020,
        lambda: r.text,
    )
    r = http.get(url, headers={"Accept": "text/event-stream", "MCP-Protocol-Version": "2026-07-28"})
    check("2026-07-28 GET stream -> 405", lambda: r.status_code == 405, lambda: str(r.status_code))


async def sdk_checks(url: str, key: str, tool: str | None, arguments: dict[str, Any]) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    for mode in ("legacy", "2026-07-28"):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
        try:
            async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
                tools = (await client.list_tools()).tools
                check(f"SDK client ({mode}): tools/list ({len(tools)} tools)", lambda: True)
                if tool:
                    result = await client.call_tool(tool, arguments)
                    check(
                        f"SDK client ({mode}): tools/call {tool}",
                        lambda r=result: not r.is_error,
                        lambda r=result: str(r.content),
                    )
        except Exception as exc:
            check(f"SDK client ({mode})", lambda: False, lambda e=exc: repr(e))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the Streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument("--key", required=True, help="a platform API key with the mcp scope")
    parser.add_argument("--tool", help="a granted tool to call, e.g. demo.echo")
    parser.add_argument("--arguments", default="{}", help="the tool's arguments as JSON")
    options = parser.parse_args()
    arguments = json.loads(options.arguments)
    with httpx.Client(headers={"Authorization": f"Bearer {options.key}"}, timeout=30) as http:
        r = http.post(options.url, json={}, headers={"Authorization": "Bearer wrong-key-000000000000"})
        check("wrong key -> 401", lambda: r.status_code == 401, lambda: str(r.status_code))
        raw_checks(http, options.url, options.tool, arguments)
    asyncio.run(sdk_checks(options.url, options.key, options.tool, arguments))
    print(f"\n{len(failures)} check(s) failed" if failures else "\nall checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
