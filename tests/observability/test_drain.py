"""SIGTERM in the middle of a stream: the stream completes, usage is written, then the process exits."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx

from routing.models import RequestLog
from tests.live import served
from tests.request_logs import wait_for_log

STREAM = (
    b'{"model": "gpt-4o-mini", "stream": true,'
    b' "messages": [{"role": "user", "content": "[[fake chunks=30 gap_ms=80]]"}]}'
)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_mid_stream_finishes_the_stream_writes_usage_and_exits(
    session_tmp, upstream, owner_key, deployment_factory
):
    deployment_factory()
    with served(session_tmp, DRAIN_TIMEOUT="20", USAGE_FLUSH_INTERVAL="30") as server:
        port = int(server.url.rsplit(":", 1)[1])
        chunks: list[str] = []
        with httpx.Client(timeout=30) as client:
            with client.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                content=STREAM,
                headers={"Authorization": f"Bearer {owner_key.secret}"},
            ) as response:
                assert response.status_code == 200
                request_id = response.headers["x-request-id"]
                lines = response.iter_lines()
                for line in lines:
                    if '"content"' in line:
                        chunks.append(line)
                    if len(chunks) == 3:
                        break
                server.process.send_signal(signal.SIGTERM)
                # The listener closes at once: a new client is refused (the load balancer moves on)...
                deadline = time.monotonic() + 5
                while not _refused(port) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _refused(port), "the server kept accepting connections while draining"
                # ...while the stream already under way runs to its end.
                rest = list(lines)
        assert server.process.poll() is None or server.process.returncode == 0
        chunks += [line for line in rest if '"content"' in line]
        assert len(chunks) >= 30  # every content chunk (the first may be the role-only delta)
        assert [line for line in rest if line][-1] == "data: [DONE]"
        server.process.wait(timeout=15)
        assert server.process.returncode == 0
    # USAGE_FLUSH_INTERVAL=30: the row can only be there because the drain flushed the writer.
    log = wait_for_log(request_id=request_id)
    assert log.status_code == 200 and not log.client_disconnected
    assert log.completion_tokens == 30
    assert "drained in" in server.log.read_text()


def test_the_drain_deadline_cuts_what_is_still_running_and_still_accounts_it(
    session_tmp, upstream, owner_key, deployment_factory
):
    deployment_factory()
    body = STREAM.replace(b"chunks=30", b"chunks=400")
    with served(session_tmp, DRAIN_TIMEOUT="1", USAGE_FLUSH_INTERVAL="30") as server:
        received: list[str] = []
        ids: list[str] = []

        def read() -> None:
            with httpx.Client(timeout=30) as client:
                try:
                    with client.stream(
                        "POST",
                        f"{server.url}/v1/chat/completions",
                        content=body,
                        headers={"Authorization": f"Bearer {owner_key.secret}"},
                    ) as response:
                        ids.append(response.headers["x-request-id"])
                        received.extend(response.iter_lines())
                except httpx.HTTPError:
                    pass

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 10
        while not ids and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        reader.join(timeout=10)
        assert server.process.returncode == 0
        assert time.monotonic() - started < 12, "the drain must give up at its deadline"
    assert "data: [DONE]" not in received
    log = RequestLog.objects.get(request_id=ids[0])
    assert log.stream and 0 < log.completion_tokens < 400
