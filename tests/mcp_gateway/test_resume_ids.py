"""A Last-Event-ID that is not one of ours (a forged position) replays nothing: the GET opens a fresh stream."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from mcp_gateway.events import event_id_parse, event_log
from tests.asgi import http_scope
from tests.keys import Issued
from tests.mcp_gateway.inprocess import application, auth_headers, request, rpc

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_position_of_other_than_ascii_digits_or_past_64_bits_is_not_an_event_id() -> None:
    assert event_id_parse("ab12_7-0") == ("ab12", "7-0")
    assert event_id_parse(f"ab12_{2**64 - 1}-{2**64 - 1}") is not None
    huge = (f"ab12_{2**64}-0", f"ab12_0-{2**64}", "ab12_" + "9" * 40 + "-0")  # past what a Redis entry id holds
    for forged in ("ab12_\u00b2-0", "ab12_7-\u0663", "ab12_\uff17-0", "ab12_7", "ab12_-0", "_7-0", *huge):
        assert event_id_parse(forged) is None, forged


async def _stream_start(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Open GET /mcp, read what it sends first, then leave as a client would."""
    communicator = ApplicationCommunicator(application(), http_scope("GET", "/mcp", headers, host="localhost"))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    first = await communicator.receive_output(10)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(10)
    return start["status"], first.get("body", b"") if first.get("more_body") else b"(ended)"


async def test_a_forged_position_on_a_real_stream_opens_a_fresh_stream(
    owner_key: Issued, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.MCP_POST_RESPONSE = "sse"  # every answer a stream with event ids
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    created = await request("POST", "/mcp", auth_headers(owner_key.secret), rpc("initialize", params))
    session = auth_headers(
        owner_key.secret, mcp_session_id=created.headers[b"mcp-session-id"].decode(), mcp_protocol_version="2025-11-25"
    )
    answered = await request("POST", "/mcp", session, rpc("ping"))
    event = next(line[4:] for line in answered.body.decode().splitlines() if line.startswith("id: "))
    stream_id = event.split("_")[0]

    with caplog.at_level(logging.ERROR, logger="mcp_gateway"):
        status, first = await _stream_start([*session, (b"last-event-id", f"{stream_id}_\u00b2-0".encode("latin-1"))])

    assert status == 200 and first == b": stream open\n\n"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


class LogAwayMidReplay:
    """The event log as it was, but for reads, which fail (Redis gone between the lookup and the replay)."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

    async def read(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise RuntimeError("the event log went away mid-replay")


async def test_a_stream_that_fails_after_its_headers_ends_instead_of_starting_a_second_response(
    owner_key: Issued, settings: Any
) -> None:
    settings.MCP_POST_RESPONSE = "sse"
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    created = await request("POST", "/mcp", auth_headers(owner_key.secret), rpc("initialize", params))
    session = auth_headers(
        owner_key.secret, mcp_session_id=created.headers[b"mcp-session-id"].decode(), mcp_protocol_version="2025-11-25"
    )
    answered = await request("POST", "/mcp", session, rpc("ping"))
    event = next(line[4:] for line in answered.body.decode().splitlines() if line.startswith("id: "))

    log = event_log()
    event_log.replace(LogAwayMidReplay(log))  # type: ignore[arg-type]
    try:
        headers = [*session, (b"last-event-id", event.encode())]
        communicator = ApplicationCommunicator(application(), http_scope("GET", "/mcp", headers, host="localhost"))
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        sent = [await communicator.receive_output(10)]
        while sent[-1]["type"] == "http.response.start" or sent[-1].get("more_body"):
            sent.append(await communicator.receive_output(10))
        await communicator.wait(10)
    finally:
        event_log.replace(log)

    assert [message["type"] for message in sent].count("http.response.start") == 1
    assert sent[0]["status"] == 200 and sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
