"""Two Authorization headers (or two of any header read as one value) are refused, never resolved."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from audit.models import AuditEvent
from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.inprocess import META

pytestmark = pytest.mark.django_db(transaction=True)

ACCEPT = ("Accept", "application/json, text/event-stream")
MODERN = [ACCEPT, ("MCP-Protocol-Version", "2026-07-28"), ("Content-Type", "application/json")]


def _call(name: str) -> dict[str, Any]:
    params = {"name": name, "arguments": {"text": "whose bill?"}, "_meta": META}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def test_two_authorization_headers_are_refused_on_every_mcp_endpoint_and_bill_nobody(
    gateway: live.Server,
    demo: UpstreamServer,
    grant: Callable[..., Any],
    owner: Tenant,
    outsider: Tenant,
    owner_key: Issued,
    key_factory: Callable[..., Issued],
) -> None:
    grant(owner, demo)
    grant(outsider, demo)
    other = key_factory(outsider, "other")
    both = [("Authorization", f"Bearer {owner_key.secret}"), ("Authorization", f"Bearer {other.secret}")]

    call = httpx.post(
        f"{gateway.url}/mcp",
        json=_call("demo.echo"),
        headers=[*both, *MODERN, ("Mcp-Method", "tools/call"), ("Mcp-Name", "demo.echo")],
    )
    with httpx.stream("GET", f"{gateway.url}/mcp/sse", headers=[*both, ("Accept", "text/event-stream")]) as stream:
        if stream.status_code == 200:  # a stream opened for one of the keys: stop reading it
            stream.close()
        else:
            stream.read()
    messages = httpx.post(
        f"{gateway.url}/mcp/messages?session_id=abc", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=both
    )

    for answer in (call, stream, messages):
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert error["data"] == {"type": "authentication_error", "code": "ambiguous_credentials"}
        assert "more than one authorization header" in error["message"]
        assert answer.headers["www-authenticate"].startswith("Bearer")
    # Neither key was used: no tool call on either tenant's record, the refusals on the record (the
    # first as it happened, the two alike after it counted for the end of the interval).
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="auth.failure", details__reason="ambiguous_credentials").exists():
        assert time.monotonic() < deadline, "the refusals were not audited"
        time.sleep(0.1)
    assert not AuditEvent.objects.filter(action="mcp.tool_call").exists()
    # One header still works.
    alone = httpx.post(
        f"{gateway.url}/mcp",
        json=_call("demo.echo"),
        headers=[both[0], *MODERN, ("Mcp-Method", "tools/call"), ("Mcp-Name", "demo.echo")],
    )
    assert alone.json()["result"]["structuredContent"] == {"result": "whose bill?"}


@pytest.mark.parametrize(
    "header", ["Mcp-Session-Id", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Origin", "Content-Type"]
)
def test_a_header_read_as_one_value_sent_twice_is_a_400(gateway: live.Server, owner_key: Issued, header: str) -> None:
    values = {
        "Mcp-Session-Id": ("a" * 32, "b" * 32),
        "MCP-Protocol-Version": ("2026-07-28", "2025-06-18"),
        "Mcp-Method": ("tools/list", "tools/call"),
        "Mcp-Name": ("demo.echo", "demo.add"),
        "Origin": (gateway.url, "http://evil.example"),
        "Content-Type": ("application/json", "text/plain"),
    }[header]
    headers = [("Authorization", f"Bearer {owner_key.secret}"), ACCEPT, ("Mcp-Method", "tools/list")]
    headers += [("MCP-Protocol-Version", "2026-07-28"), ("Content-Type", "application/json")]
    headers = [(name, value) for name, value in headers if name.lower() != header.lower()]
    headers += [(header, values[0]), (header, values[1])]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    answer = httpx.post(f"{gateway.url}/mcp", json=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["data"]["code"] == "duplicate_header"
