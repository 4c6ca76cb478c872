"""Session store and open-stream limits (Redis when configured, else in process); the GET stream's life."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from django.conf import settings

from mcp_gateway import sessions
from mcp_gateway.sessions import LocalSessionStore, McpSession, RedisSessionStore, session_id_new
from tests import live
from tests.keys import Issued


def store() -> LocalSessionStore | RedisSessionStore:
    return RedisSessionStore(settings.REDIS_URL) if settings.REDIS_URL else LocalSessionStore()


def test_sessions_expire_after_the_idle_timeout_and_touching_extends_them(settings: object) -> None:
    settings.MCP_SESSION_IDLE_TIMEOUT = 1  # type: ignore[attr-defined]
    subject = store()

    async def scenario() -> tuple[object, object, object]:
        session = McpSession(session_id_new(), 1, 1, "2025-11-25", "streamable_http")
        await subject.save(session)
        await asyncio.sleep(0.6)
        kept = await subject.touch(session.id)
        await asyncio.sleep(0.6)
        still = await subject.touch(session.id)
        await asyncio.sleep(1.3)
        return kept, still, await subject.touch(session.id)

    kept, still, gone = asyncio.run(scenario())
    assert kept is not None and still is not None
    assert gone is None


def test_open_streams_per_tenant_are_limited_and_closing_frees_a_place(settings: object) -> None:
    settings.MCP_MAX_STREAMS_PER_TENANT = 2  # type: ignore[attr-defined]
    subject = store()
    tenant = int(time.time() * 1000) % 1_000_000_000  # fresh counters on a shared Redis

    async def scenario() -> list[bool]:
        first, second, third = session_id_new(), session_id_new(), session_id_new()
        results = [await subject.stream_open(tenant, s) for s in (first, second, third)]
        await subject.stream_close(tenant, first)
        results.append(await subject.stream_open(tenant, third))
        results.append(await subject.stream_open(tenant + 1, first))  # another tenant is not affected
        return results

    assert asyncio.run(scenario()) == [True, True, False, True, True]


@pytest.mark.skipif(not settings.REDIS_URL, reason="leases matter only when several processes share the count (Redis)")
def test_streams_of_a_crashed_process_stop_counting_when_their_lease_ends(settings: object) -> None:
    settings.MCP_MAX_STREAMS_PER_TENANT = 1  # type: ignore[attr-defined]
    settings.MCP_SSE_HEARTBEAT = 0.1  # type: ignore[attr-defined]
    subject = store()
    tenant = int(time.time() * 1000) % 1_000_000_000 + 7

    async def scenario() -> list[bool]:
        crashed = await subject.stream_open(tenant, session_id_new())  # never closed, never renewed
        refused = await subject.stream_open(tenant, session_id_new())
        await asyncio.sleep(sessions.stream_lease() + 0.2)
        return [crashed, refused, await subject.stream_open(tenant, session_id_new())]

    assert asyncio.run(scenario()) == [True, False, True]


@pytest.mark.django_db(transaction=True)
def test_get_stream_sends_heartbeats_and_ends_when_the_session_is_deleted(
    gateway: live.Server, owner_key: Issued
) -> None:
    url = f"{gateway.url}/mcp"
    headers = {"Authorization": f"Bearer {owner_key.secret}", "Accept": "application/json, text/event-stream"}
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    created = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}, headers=headers)
    session = {**headers, "Mcp-Session-Id": created.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    with httpx.stream("GET", url, headers={**session, "Accept": "text/event-stream"}, timeout=10) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines) == ": stream open"
        # A priming event (an id, empty data) for Last-Event-ID resumption comes first, then heartbeats.
        assert ": ping" in [next(lines) for _ in range(6)]
        assert httpx.delete(url, headers=session).status_code == 200
        started = time.monotonic()
        for _ in lines:  # the stream ends at the next heartbeat after the session is gone
            pass
        assert time.monotonic() - started < 5
