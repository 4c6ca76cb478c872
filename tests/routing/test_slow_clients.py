"""Slow and stalled stream readers (``manage.py serve``): memory stays bounded, the upstream waits, a stall is cut."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests import live
from tests.request_logs import wait_for_log, wait_for_logs

# ~190 bytes an event: each stream is ~19 MB, far more than any buffer on the way.
STREAM_WORDS = 100_000
READERS = 5
STALL_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def serve(django_db_setup: None, django_db_blocker: object, session_tmp: Path) -> Iterator[live.Server]:
    with live.served(session_tmp) as server:
        yield server


def stream_request(server: live.Server, secret: str, words: int) -> bytes:
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[[fake chunks=%d]]"}]}'
        % words
    )
    host = urlsplit(server.url).netloc
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def open_stream(server: live.Server, secret: str, words: int = STREAM_WORDS) -> tuple[socket.socket, str, int]:
    """A raw client with a small receive buffer; returns it after the response head, with the request id and
    the head's size."""
    parts = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(stream_request(server, secret, words))
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, f"the server closed the connection after {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 200"), head
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    )
    return sock, request_id, len(head)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def events_sent(upstream: live.Server) -> int:
    return httpx.get(upstream.url.removesuffix("/v1") + "/healthz", timeout=5).json()["events_sent"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's RSS from /proc")
def test_slow_readers_hold_their_streams_back_and_the_server_memory_stays_bounded(
    serve, upstream, owner_key, deployment_factory
):
    deployment_factory()
    warm = httpx.post(
        f"{serve.url}/v1/chat/completions",
        content=stream_request(serve, owner_key.secret, 50).split(b"\r\n\r\n", 1)[1],
        headers={"Authorization": f"Bearer {owner_key.secret}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert warm.text.endswith("data: [DONE]\n\n")
    before = peak = rss_bytes(serve.process.pid)
    clients = [open_stream(serve, owner_key.secret) for _ in range(READERS)]
    started = time.monotonic()
    received = 0
    sent_at_3s = None
    while time.monotonic() - started < 6:
        for sock, _, _ in clients:
            received += len(sock.recv(1))
        time.sleep(0.1)
        peak = max(peak, rss_bytes(serve.process.pid))
        if sent_at_3s is None and time.monotonic() - started >= 3:
            sent_at_3s = events_sent(upstream)
    sent_late = events_sent(upstream) - (sent_at_3s or 0)
    for sock, _, _ in clients:
        sock.close()

    growth = peak - before
    assert growth < 30 * 2**20, f"the server grew by {growth / 2**20:.1f} MiB for {READERS} slow readers"
    # Reading 10 bytes a second, the readers took a few hundred bytes; once the buffers on the
    # way are full, the upstream is not read any more.
    assert sent_late < 500, f"the upstream sent {sent_late} more events while the readers were behind"
    logs = wait_for_logs(READERS, request_id__in=[request_id for _, request_id, _ in clients])
    for log in logs:
        assert log.client_disconnected and log.error_type == "client_disconnected"
        assert log.cut_after_bytes is not None and log.cut_after_bytes < 2**20, log.cut_after_bytes
        assert log.completion_tokens < STREAM_WORDS // 4, "usage counts what was read, not the whole answer"


def test_a_client_that_stops_reading_is_cut_after_the_stall_timeout(
    django_db_setup, session_tmp, upstream, owner_key, deployment_factory
):
    deployment_factory()
    with live.served(session_tmp, STREAM_STALL_TIMEOUT=str(STALL_TIMEOUT)) as server:
        sock, request_id, head = open_stream(server, owner_key.secret)
        stopped = time.monotonic()
        # The client reads nothing more; the server fills its buffers and, STALL_TIMEOUT later, cuts it.
        log = wait_for_log(request_id=request_id)
        cut_after = time.monotonic() - stopped
        sock.settimeout(5)
        taken = head
        with pytest.raises(ConnectionResetError):  # the cut is an abort: whatever follows the buffered bytes is a reset
            while chunk := sock.recv(65536):
                taken += len(chunk)
        sock.close()
        log_text = server.log.read_text()
    assert cut_after < STALL_TIMEOUT + 5
    assert log.client_disconnected and log.error_type == "client_disconnected"
    # What the client could still read after the cut is what it had received (head included).
    assert log.cut_after_bytes is not None and head < log.cut_after_bytes <= taken
    assert 0 < log.completion_tokens < STREAM_WORDS // 4
    assert "stream to 127.0.0.1" in log_text and "cut" in log_text


def test_a_stream_read_to_its_end_records_no_cut(serve, owner_key, deployment_factory):
    deployment_factory()
    with httpx.stream(
        "POST",
        f"{serve.url}/v1/chat/completions",
        content=stream_request(serve, owner_key.secret, 2000).split(b"\r\n\r\n", 1)[1],
        headers={"Authorization": f"Bearer {owner_key.secret}", "Content-Type": "application/json"},
        timeout=30,
    ) as response:
        text = "".join(response.iter_text())
    assert text.endswith("data: [DONE]\n\n")
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert not log.client_disconnected and log.cut_after_bytes is None
    assert log.completion_tokens == 2000
