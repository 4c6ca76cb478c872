#!/usr/bin/env python
"""Check an MCP gateway's legacy HTTP+SSE transport (2024-11-05) end to end.

Usage: validate_mcp_sse.py https://gateway.example/mcp/sse --key sk-... [--post-base https://node-2.example]
       [--tool demo.echo --arguments '{"text":"hi"}']

Opens the stream, checks the ``endpoint`` event, the 202 on POST, replies arriving on the
stream, the errors for malformed bodies and unknown sessions, then runs the official SDK
client. ``--post-base`` sends the POSTs to another server process or node than the one
holding the stream, to check that replies cross processes. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def rebase(url: str, base: str | None) -> str:
    if not base:
        return url
    parts = urlsplit(url)
    return base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def raw_checks(sse_url: str, key: str, post_base: str | None) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http, http.stream("GET", sse_url, headers=auth) as stream:
        check(
            "GET stream -> 200 text/event-stream",
            stream.status_code == 200 and "text/event-stream" in stream.headers.get("content-type", ""),
        )
        lines = stream.iter_lines()
        event, data = next(lines), next(lines)
        check("first event is 'endpoint'", event == "event: endpoint", event)
        endpoint = rebase(urljoin(sse_url, data.removeprefix("data: ")), post_base)
        r = http.post(endpoint, content=b"{oops", headers=auth)
        check("malformed JSON -> 400 / -32700", r.status_code == 400 and r.json()["error"]["code"] == -32700, r.text)
        unknown = endpoint.split("session_id=")[0] + "session_id=" + "0" * 32
        r = http.post(unknown, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=auth)
        check("unknown session -> 404", r.status_code == 404, str(r.status_code))
        init = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "validate", "version": "1"}}
        r = http.post(endpoint, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}, headers=auth)
        check("POST initialize -> 202", r.status_code == 202, str(r.status_code))
        reply = next_message(lines)
        check("initialize reply arrives on the stream", reply.get("id") == 1 and "result" in reply, json.dumps(reply))
        http.post(endpoint, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=auth)
        r = http.post(endpoint, json={"jsonrpc": "2.0", "id": 2, "method": "no/such"}, headers=auth)
        reply = next_message(lines)
        check("unknown method -> -32601 on the stream", reply.get("error", {}).get("code") == -32601, json.dumps(reply))
        r = http.post(endpoint, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=auth)
        reply = next_message(lines)
        check("tools/list on the stream", isinstance(reply.get("result", {}).get("tools"), list), json.dumps(reply))


def next_message(lines: Any) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line.removeprefix("data: "))
    return {}


async def sdk_check(sse_url: str, key: str, tool: str | None, arguments: dict[str, Any]) -> None:
    from mcp import Client
    from mcp.client.sse import sse_client

    try:
        async with Client(
            sse_client(sse_url, headers={"Authorization": f"Bearer {key}"}), mode="legacy", cache=None
        ) as client:
            tools = (await client.list_tools()).tools
            check(f"SDK client over SSE: tools/list ({len(tools)} tools)", True)
            if tool:
                result = await client.call_tool(tool, arguments)
                check(f"SDK client over SSE: tools/call {tool}", not result.is_error, str(result.content))
    except Exception as exc:
        check("SDK client over SSE", False, repr(exc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the SSE endpoint, e.g. http://127.0.0.1:8000/mcp/sse")
    parser.add_argument("--key", required=True, help="a platform API key with the mcp scope")
    parser.add_argument("--post-base", help="send POSTs to this base URL (another process) instead")
    parser.add_argument("--tool", help="a granted tool to call, e.g. demo.echo")
    parser.add_argument("--arguments", default="{}", help="the tool's arguments as JSON")
    options = parser.parse_args()
    raw_checks(options.url, options.key, options.post_base)
    asyncio.run(sdk_check(options.url, options.key, options.tool, json.loads(options.arguments)))
    print(f"\n{len(failures)} check(s) failed" if failures else "\nall checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
