"""The per-stream event log behind Last-Event-ID (Redis when configured, else in process)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings

from mcp_gateway.events import LocalEventLog, RedisEventLog, StreamInfo, event_id, event_id_parse
from mcp_gateway.sessions import session_id_new


def log() -> LocalEventLog | RedisEventLog:
    return RedisEventLog(settings.REDIS_URL) if settings.REDIS_URL else LocalEventLog()


def test_the_log_keeps_the_newest_events_of_a_stream_up_to_the_history_size(settings: object) -> None:
    settings.MCP_EVENT_HISTORY = 3  # type: ignore[attr-defined]
    subject, stream = log(), session_id_new()

    async def scenario() -> tuple[Any, list[str], list[str], StreamInfo | None]:
        primer = await subject.open(stream, StreamInfo("s1", "post"))
        entries = [await subject.append(stream, f"m{n}") for n in range(5)]
        kept = [event.data for event in await subject.read(stream, primer)]
        after_third = [event.data for event in await subject.read(stream, entries[2])]
        return entries, kept, after_third, await subject.info(stream)

    _, kept, after_third, info = asyncio.run(scenario())
    assert kept == ["m2", "m3", "m4"]
    assert after_third == ["m3", "m4"]
    assert info == StreamInfo("s1", "post")


def test_a_waiting_reader_gets_the_final_event_appended_later() -> None:
    subject, stream = log(), session_id_new()

    async def scenario() -> list[tuple[str, bool]]:
        primer = await subject.open(stream, StreamInfo("s1", "post"))
        reader = asyncio.ensure_future(subject.read(stream, primer, wait=10))
        await asyncio.sleep(0.1)
        await subject.append(stream, '{"id":1}', final=True)
        return [(event.data, event.final) for event in await reader]

    assert asyncio.run(scenario()) == [('{"id":1}', True)]


def test_event_ids_name_their_stream_and_foreign_ids_are_ignored() -> None:
    assert event_id_parse(event_id("abc123", "17-0")) == ("abc123", "17-0")
    for foreign in (None, "", "42", "abc_def", "ab c_1-0", "x" * 200 + "_1-0"):
        assert event_id_parse(foreign) is None
