"""Last-Event-ID: a request's SSE answer and the GET stream resume where they broke, also on another process."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import gateway_env
from tests.mcp_gateway.streaming import call, initialize, sse_events

pytestmark = pytest.mark.django_db(transaction=True)

needs_redis = pytest.mark.skipif(
    not settings.REDIS_URL, reason="another process sees the history and catalogue changes through Redis"
)


@contextlib.contextmanager
def resume_target(gateway: live.Server, tmp: Path) -> Iterator[live.Server]:
    """Another server process when Redis shares the history; without Redis, the same process."""
    if not settings.REDIS_URL:
        yield gateway
        return
    with live.daphne_server(tmp, **gateway_env()) as second:
        yield second


def test_a_tools_call_stream_cut_after_its_first_progress_resumes_with_the_rest_and_the_response(
    gateway: live.Server, session_tmp: Path, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    url = f"{gateway.url}/mcp"
    session = initialize(url, owner_key.secret)
    deadline = time.monotonic() + 60
    with resume_target(gateway, session_tmp) as other:
        request = call("demo.count_slowly", {"steps": 4, "pause": 0.3}, request_id=5, token="resume-me")
        with httpx.stream("POST", url, json=request, headers=session, timeout=30) as response:
            events = sse_events(response.iter_lines(), deadline)
            primer, first = next(events), next(events)
        # The connection is gone; the call goes on where it runs, and its events reach the log.
        resume = {**session, "Accept": "text/event-stream", "Last-Event-ID": first["id"]}
        with httpx.stream("GET", f"{other.url}/mcp", headers=resume, timeout=30) as resumed:
            assert resumed.status_code == 200
            rest = list(sse_events(resumed.iter_lines(), deadline))

    bodies = [json.loads(event["data"]) for event in [first, *rest]]
    assert [body["params"]["progress"] for body in bodies if body.get("method")] == [1, 2, 3, 4]
    assert bodies[-1]["id"] == 5 and bodies[-1]["result"]["content"][0]["text"] == "counted to 4"
    ids = [event["id"] for event in [primer, first, *rest]]
    assert len(set(ids)) == len(ids)
    assert {event_id.split("_")[0] for event_id in ids} == {primer["id"].split("_")[0]}


def test_a_stream_of_another_session_is_not_replayed(
    gateway: live.Server, streaming_demo: UpstreamServer, owner_key: Issued
) -> None:
    url = f"{gateway.url}/mcp"
    mine, theirs = initialize(url, owner_key.secret), initialize(url, owner_key.secret)
    with httpx.stream(
        "POST", url, json=call("demo.count_slowly", {"steps": 1}, token="x"), headers=mine, timeout=30
    ) as response:
        primer, *_ = list(sse_events(response.iter_lines(), time.monotonic() + 30))

    resume = {**theirs, "Accept": "text/event-stream", "Last-Event-ID": primer["id"]}
    with httpx.stream("GET", url, headers=resume, timeout=30) as other:
        assert other.status_code == 200
        fresh = next(sse_events(other.iter_lines(), time.monotonic() + 30))
    # A fresh stream of its own (a new priming id), nothing of the other session's.
    assert fresh["data"] == "" and fresh["id"].split("_")[0] != primer["id"].split("_")[0]


@needs_redis
def test_the_get_stream_replays_on_another_process_and_goes_on_there(
    gateway: live.Server,
    session_tmp: Path,
    streaming_demo: UpstreamServer,
    grant: Callable[..., Any],
    owner: Tenant,
    owner_key: Issued,
) -> None:
    url = f"{gateway.url}/mcp"
    session = initialize(url, owner_key.secret)
    listen = {**session, "Accept": "text/event-stream"}
    deadline = time.monotonic() + 60
    with live.daphne_server(session_tmp, **gateway_env()) as second:
        with httpx.stream("GET", url, headers=listen, timeout=30) as stream:
            events = sse_events(stream.iter_lines(), deadline)
            primer = next(events)
            grant(owner, streaming_demo, "add")
            changed = next(events)
        assert json.loads(changed["data"]) == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}

        with httpx.stream(
            "GET", f"{second.url}/mcp", headers={**listen, "Last-Event-ID": primer["id"]}, timeout=30
        ) as resumed:
            events = sse_events(resumed.iter_lines(), deadline)
            replayed = next(events)
            grant(owner, streaming_demo, "fail")
            later = next(events)

    assert replayed == changed  # the same event, with the same id, from the history
    assert json.loads(later["data"])["method"] == "notifications/tools/list_changed"
    assert later["id"].split("_")[0] == primer["id"].split("_")[0] and later["id"] != changed["id"]
