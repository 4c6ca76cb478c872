"""The tests' TCP proxy: it forwards, black-holes (no answer, no refusal) and restores, and cuts."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from tests.live import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo() -> tuple[str, int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()


def test_a_black_hole_answers_nothing_and_refuses_nothing_until_restored(echo: tuple[str, int]) -> None:
    proxy = TcpProxy(echo)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
        sock.sendall(b"one")
        assert sock.recv(16) == b"one"
        proxy.blackhole()
        sock.sendall(b"two")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as late:  # accepted, never joined
            late.sendall(b"three")
            late.settimeout(0.3)
            with pytest.raises(TimeoutError):
                late.recv(16)
            proxy.restore()
            late.settimeout(2)
            assert late.recv(16) == b"three"
        sock.settimeout(2)
        assert sock.recv(16) == b"two"  # held, then delivered late
    proxy.cut()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
