"""One client's bad call fails that call alone: never another tenant's call on the upstream link they share."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from mcp_gateway.call_audit import CallContext
from mcp_gateway.jsonrpc import RpcError
from mcp_gateway.methods import tool_call
from mcp_gateway.models import UpstreamServer
from mcp_gateway.selectors import catalog_cache
from mcp_gateway.upstream import UnsendableMessage, UpstreamCallFailed, pool
from tenants.auth import KeyContext, key_authenticate_header
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.inprocess import META

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT = 100


@pytest.fixture
def demo(demo: UpstreamServer, grant: Callable[..., Any], owner: Tenant, outsider: Tenant) -> UpstreamServer:
    """The upstream "demo", granted whole to two tenants that share its link."""
    grant(owner, demo)
    grant(outsider, demo)
    return demo


@pytest.fixture
def other_key(outsider: Tenant, key_factory: Callable[..., Issued]) -> Issued:
    return key_factory(outsider, "other")


@pytest.fixture
async def links_closed() -> AsyncIterator[None]:
    """The links this test's loop opened are closed with it."""
    yield
    await pool.close_all()


async def _context(secret: str) -> CallContext:
    key: KeyContext = await key_authenticate_header(f"Bearer {secret}", ip=None, endpoint="mcp")
    return CallContext(key, "2025-11-25", "", "127.0.0.1", "", "streamable_http")


async def _audit_events(tenant: Tenant, expected: int) -> list[AuditEvent]:
    await deferred_audit.flush()
    deadline = time.monotonic() + 10
    while True:
        events = [e async for e in AuditEvent.objects.filter(action="mcp.tool_call", tenant_id=tenant.pk)]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_an_argument_the_upstream_link_cannot_encode_fails_only_its_own_call(
    demo: UpstreamServer,
    owner: Tenant,
    owner_key: Issued,
    other_key: Issued,
    links_closed: None,
) -> None:
    other = await _context(other_key.secret)
    hostile = await _context(owner_key.secret)
    catalog = await catalog_cache.get()
    target = catalog.targets[demo.pk]
    await tool_call(other, catalog, {"name": "demo.echo", "arguments": {"text": "warm"}})
    link = pool._links[demo.pk]

    async def good(index: int) -> Any:
        result = await tool_call(other, catalog, {"name": "demo.echo", "arguments": {"text": f"call {index}"}})
        return result["structuredContent"] == {"result": f"call {index}"} or result

    async def bad() -> list[Any]:
        refused: list[Any] = []
        # Values no JSON body can carry, as a future code path might still hand them on.
        for value in ("\ud800", float("nan"), b"\xff", object()):
            try:
                await tool_call(hostile, catalog, {"name": "demo.echo", "arguments": {"text": value}})
            except RpcError as exc:
                refused.append(exc.code)
            await asyncio.sleep(0.005)
        # Straight at the link: a message its transport cannot encode, and one the SDK refuses to build.
        for operation in (
            lambda client: client.call_tool("echo", {"text": "\udfff"}),
            lambda client: client.get_prompt("greet", {"name": 5}),
        ):
            try:
                await pool.run(target, operation)
            except (UnsendableMessage, UpstreamCallFailed) as exc:
                refused.append(type(exc).__name__)
        return refused

    *results, refused = await asyncio.gather(*(good(i) for i in range(CONCURRENT)), bad())

    assert [r for r in results if r is not True] == []
    assert refused == [-32602, -32602, -32602, -32602, "UnsendableMessage", "UpstreamCallFailed"]
    assert pool._links[demo.pk] is link and link.alive
    failed = [e for e in await _audit_events(owner, 4) if e.outcome == AuditEvent.Outcome.FAILURE]
    assert len(failed) == 4 and {e.details["error"] for e in failed} == {"invalid_arguments"}
    assert all(len(e.details["arguments_sha256"]) == 64 for e in failed)


def _modern(secret: str, method: str, name: str | None = None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {secret}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def _body(method: str, params: dict[str, Any], request_id: int = 1) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}}
    ).encode()


HOSTILE: list[tuple[str, str | None, bytes]] = [
    # A lone surrogate, NaN and extreme nesting in the arguments (raw bodies: no client library would send them).
    (
        "tools/call",
        "demo.echo",
        _body("tools/call", {"name": "demo.echo", "arguments": {"text": "X"}}).replace(b'"X"', b'"\\ud800"'),
    ),
    (
        "tools/call",
        "demo.add",
        _body("tools/call", {"name": "demo.add", "arguments": {"a": 1, "b": 2}}).replace(b'"a": 1', b'"a": NaN'),
    ),
    (
        "tools/call",
        "demo.echo",
        _body("tools/call", {"name": "demo.echo", "arguments": {"text": "X"}}).replace(
            b'"X"', b"[" * 20_000 + b"]" * 20_000
        ),
    ),
    # Valid JSON the upstream's tool or the SDK refuses: a 4,000-digit integer, a prompt argument that is no string.
    ("tools/call", "demo.add", _body("tools/call", {"name": "demo.add", "arguments": {"a": 10**3999, "b": 1}})),
    ("prompts/get", "demo.greet", _body("prompts/get", {"name": "demo.greet", "arguments": {"name": 5}})),
    ("prompts/get", "demo.greet", _body("prompts/get", {"name": "demo.greet", "arguments": {"name": {"a": [1]}}})),
    ("tools/call", "demo.echo", _body("tools/call", {"name": "demo.echo", "arguments": ["not", "an", "object"]})),
    ("tools/call", "demo.echo", _body("tools/call", {"name": "demo.echo", "arguments": {"text": [[[[1.5e308]]]]}})),
    ("resources/read", "memo://readme", _body("resources/read", {"uri": "memo://readme", "extra": [None] * 100})),
]


def test_one_tenants_hostile_calls_never_fail_another_tenants_concurrent_calls(
    gateway: live.Server,
    demo: UpstreamServer,
    owner: Tenant,
    owner_key: Issued,
    other_key: Issued,
) -> None:
    other = other_key
    url = f"{gateway.url}/mcp"

    async def scenario() -> tuple[list[Any], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=CONCURRENT + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def good(index: int) -> Any:
                params = {"name": "demo.echo", "arguments": {"text": f"call {index}"}}
                answer = await client.post(
                    url, content=_body("tools/call", params), headers=_modern(other.secret, "tools/call", "demo.echo")
                )
                result = answer.json().get("result") or answer.json()
                return result.get("structuredContent") == {"result": f"call {index}"} or result

            async def hostile(method: str, name: str | None, body: bytes) -> httpx.Response:
                return await client.post(url, content=body, headers=_modern(owner_key.secret, method, name))

            await good(-1)  # the link is up before the crowd arrives
            # Every call at once, the hostile ones spread among the others.
            calls: list[Any] = [good(i) for i in range(CONCURRENT)]
            for index, (method, name, body) in enumerate(HOSTILE * 3):
                calls.insert(index * 4, hostile(method, name, body))
            answers = await asyncio.gather(*calls)
            results = [a for a in answers if not isinstance(a, httpx.Response)]
            return results, [a for a in answers if isinstance(a, httpx.Response)]

    results, answers = asyncio.run(scenario())

    assert [r for r in results if r is not True] == []
    for answer in answers:
        assert answer.status_code < 500, answer.text
        body = answer.json()
        assert body["jsonrpc"] == "2.0" and ("error" in body) != ("result" in body), body
    # Each hostile tools/call that reached the tool-call step is on the record: the 4,000-digit integer and the
    # huge float (the parse errors and the arguments that are no object never got there).
    reached = 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = AuditEvent.objects.filter(action="mcp.tool_call", tenant_id=owner.pk)
        if events.count() >= 3 * reached:
            break
        time.sleep(0.1)
    assert events.count() == 3 * reached
