"""The in-process session store and event log (no Redis) stay cheap per new entry however many are live."""

from __future__ import annotations

import time

import pytest

from mcp_gateway import events, sessions
from mcp_gateway.events import LocalEventLog, StreamInfo
from mcp_gateway.sessions import LocalSessionStore, McpSession

pytestmark = pytest.mark.serial  # bounds on time

PAST = 3_000  # entries saved past the sweep threshold, every one still live


async def test_sessions_past_the_sweep_threshold_that_are_all_live_are_not_swept_on_every_save() -> None:
    store = LocalSessionStore()
    for index in range(sessions.PRUNE_AT):
        await store.save(McpSession(f"{index:032x}", 1, 1, "2025-11-25", "streamable_http"))
    started = time.perf_counter()
    for index in range(sessions.PRUNE_AT, sessions.PRUNE_AT + PAST):
        await store.save(McpSession(f"{index:032x}", 1, 1, "2025-11-25", "streamable_http"))
    elapsed = time.perf_counter() - started

    # A sweep per save walked all 100,000 others each time: over 20 s for these 3,000.
    assert elapsed < 1.0, elapsed
    assert await store.touch(f"{0:032x}") is not None


async def test_event_logs_past_the_sweep_threshold_that_are_all_live_are_not_swept_on_every_open() -> None:
    log = LocalEventLog()
    for index in range(events.PRUNE_AT):
        await log.open(f"{index:032x}", StreamInfo("s", "post"))
    started = time.perf_counter()
    for index in range(events.PRUNE_AT, events.PRUNE_AT + PAST):
        await log.open(f"{index:032x}", StreamInfo("s", "post"))
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0, elapsed
    assert await log.info(f"{0:032x}") == StreamInfo("s", "post")
