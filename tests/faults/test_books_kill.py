"""A server killed with SIGKILL right after answering: what its answered requests leave in the books.

Under USAGE_DURABILITY=journal every answered request is recorded once a server starts again
on the same VAR_DIR; under the default (batch) the rows waiting for the next flush are lost,
here all of them, since the flush interval is longer than the test.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from routing.models import RequestLog
from tests import live
from tests.routing.usage_books import books

pytestmark = pytest.mark.faults

ANSWERED = 24
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[fake chunks=3]]"}]}'
STREAM = CHAT[:-1] + b', "stream": true}'


def answer(url: str, secret: str) -> list[str]:
    """ANSWERED requests, half of them streams, each read to its last byte; their request ids."""
    ids = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {secret}"}) as client:
        for n in range(ANSWERED):
            response = client.post(f"{url}/v1/chat/completions", content=STREAM if n % 2 else CHAT)
            assert response.status_code == 200, response.text
            if n % 2:
                assert response.text.rstrip().endswith("data: [DONE]")
            ids.append(response.headers["x-request-id"])
    return ids


def recorded(ids: list[str]) -> int:
    return RequestLog.objects.filter(request_id__in=ids).count()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("durability", ["journal", "batch"])
def test_requests_answered_just_before_sigkill_are_recorded_after_a_restart_only_under_the_journal(
    tmp_path: Path, upstream: live.Server, owner_key, deployment_factory, durability: str
) -> None:
    deployment_factory()
    # The batch writer would flush after 30 s: whatever is written comes from the journal.
    env = {"USAGE_DURABILITY": durability, "USAGE_FLUSH_INTERVAL": "30", "VAR_DIR": str(tmp_path / "var")}
    with live.daphne_server(tmp_path, **env) as server:
        ids = answer(server.url, owner_key.secret)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    assert recorded(ids) == 0, "nothing was flushed before the kill"
    journal = sorted((tmp_path / "var" / "usage-journal").glob("*.jsonl"))
    if durability == "batch":
        assert journal == []
        # The documented loss: every row of the unflushed interval (here all of them).
        with live.daphne_server(tmp_path, **env):
            time.sleep(1)
        assert recorded(ids) == 0
        return

    assert sum(len(path.read_text().splitlines()) for path in journal) == ANSWERED
    started = time.monotonic()
    with live.daphne_server(tmp_path, **env):
        up = time.monotonic() - started
        deadline = time.monotonic() + 30
        while recorded(ids) < ANSWERED and time.monotonic() < deadline:
            time.sleep(0.05)
        replayed = time.monotonic() - started
    assert recorded(ids) == ANSWERED
    assert replayed - up < 5, f"the journal was written {replayed - up:.1f} s after the server answered"
    assert list((tmp_path / "var" / "usage-journal").glob("*.jsonl")) == []
    logs, rollups = books()
    assert rollups == logs
    statuses = set(RequestLog.objects.filter(request_id__in=ids).values_list("status_code", "stream"))
    assert statuses == {(200, True), (200, False)}
    assert set(RequestLog.objects.filter(request_id__in=ids).values_list("completion_tokens", flat=True)) != {0}
