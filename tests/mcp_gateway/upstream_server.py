"""An upstream MCP server for the tests, built with the official SDK's own server classes.

Run as ``python -m tests.mcp_gateway.upstream_server --port N [--transport streamable-http|sse]
[--token T]``; with ``--token`` every request must carry ``Authorization: Bearer T``, so the
tests see the gateway send the stored credential (and never the client's own key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("test-upstream", instructions="Tools for the gateway tests.")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def delete_everything(confirm: bool = False) -> str:
    """A dangerous tool that tenants should not be granted."""
    return "deleted" if confirm else "nothing deleted"


@server.tool()
def fail(reason: str) -> str:
    """Always fails, so callers see a tool error (isError) rather than a protocol error."""
    raise ValueError(reason)


async def count_slowly(steps: int, ctx: Context, pause: float = 0.05) -> str:
    """Count to ``steps``, reporting progress after each step (served with --sse-responses only)."""
    for step in range(1, steps + 1):
        await asyncio.sleep(pause)
        await ctx.report_progress(step, steps, f"step {step}")
    return f"counted to {steps}"


def trace_context(ctx: Context) -> str:
    """The W3C trace context this call arrived with in its ``_meta`` (served with --sse-responses only)."""
    meta = ctx.request_context.meta or {}
    return json.dumps({key: meta.get(key) for key in ("traceparent", "tracestate")})


@server.resource("memo://readme")
def readme() -> str:
    """A small text resource."""
    return "read me"


@server.prompt()
def greet(name: str) -> str:
    """A prompt that greets someone."""
    return f"Say hello to {name}."


def bearer_required(app: Any, token: str) -> Any:
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing or wrong upstream credential"})
                return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse"])
    parser.add_argument("--token", default="")
    parser.add_argument("--sse-responses", action="store_true", help="answer with SSE, so progress can be sent")
    options = parser.parse_args()
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if options.sse_responses:
        server.add_tool(count_slowly)
        server.add_tool(trace_context)
    if options.transport == "sse":
        app = server.sse_app(transport_security=security)
    else:
        app = server.streamable_http_app(transport_security=security, json_response=not options.sse_responses)
    if options.token:
        app = bearer_required(app, options.token)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
