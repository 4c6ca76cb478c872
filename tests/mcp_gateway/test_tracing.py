"""An MCP tools/call is traced: a server span continuing the caller's trace, the tool call under it, and
the trace context handed on to the upstream MCP server in ``params._meta`` (SEP-414)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from opentelemetry.trace import SpanKind

from audit.services import deferred_audit
from mcp_gateway.consumers import StreamableHttpConsumer
from mcp_gateway.models import UpstreamServer
from routing.usage import usage_writer
from tests.asgi import http_scope
from tests.keys import Issued

pytestmark = pytest.mark.django_db(transaction=True)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


async def _post(secret: str, body: dict[str, Any], *, bundle: str | None = None) -> tuple[int, Any]:
    path = f"/mcp/{bundle}" if bundle else "/mcp"
    headers = [
        (b"authorization", f"Bearer {secret}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", body["method"].encode()),
        (b"mcp-name", body["params"]["name"].encode()),
        (b"traceparent", f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01".encode()),
    ]
    scope = http_scope("POST", path, headers, host="localhost")
    scope["url_route"] = {"args": (), "kwargs": {"bundle": bundle} if bundle else {}}
    communicator = ApplicationCommunicator(StreamableHttpConsumer.as_asgi(), scope)
    await communicator.send_input({"type": "http.request", "body": json.dumps(body).encode(), "more_body": False})
    start = await communicator.receive_output(30)
    chunks = []
    while True:
        message = await communicator.receive_output(30)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    for writer in (usage_writer, deferred_audit):
        # Write the audit rows now, and forget the flush timer scheduled on this short-lived loop.
        await writer.flush()
        writer.discard()
    return int(start["status"]), json.loads(b"".join(chunks))


def test_a_tool_call_is_one_trace_from_the_caller_through_the_gateway_to_the_upstream_server(
    spans,
    streaming_demo: UpstreamServer,
    grant: Callable[..., Any],
    owner,
    owner_key: Issued,
) -> None:
    grant(owner, streaming_demo, "trace_context")
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "demo.trace_context", "arguments": {}, "_meta": META},
    }
    spans.clear()
    status, answer = asyncio.run(_post(owner_key.secret, call))
    assert status == 200, answer
    named = {span.name: span for span in spans.get_finished_spans()}
    server, tool_call = named["POST /mcp"], named["mcp.tool_call"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    assert (server.attributes or {})["http.response.status_code"] == 200
    assert tool_call.parent is not None and tool_call.parent.span_id == server.context.span_id
    attributes = tool_call.attributes or {}
    assert attributes["gen_ai.tool.name"] == "trace_context"
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["llmp.mcp.server"] == "demo"
    # The upstream MCP server received the trace context of the tool call span.
    received = json.loads(answer["result"]["content"][0]["text"])
    assert received["traceparent"] == f"00-{TRACE_ID}-{tool_call.context.span_id:016x}-01"


def test_a_refused_mcp_request_ends_its_server_span_with_the_status(spans, transactional_db) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "demo.echo", "_meta": META}}
    status, answer = asyncio.run(_post("sk-not-a-key", call))
    assert status == 401, answer
    [server] = [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.name == "POST /mcp"
    assert (server.attributes or {})["http.response.status_code"] == 401
    assert "mcp.tool_call" not in {span.name for span in spans.get_finished_spans()}
