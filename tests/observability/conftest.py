"""Observability fixtures: a local OTLP collector."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.observability.otlp import Collector


@pytest.fixture
def collector() -> Iterator[str]:
    """The URL of a local OTLP/HTTP traces endpoint; what it receives is in ``Collector.received``."""
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
