"""Observability test fixtures: spans kept in memory, and live ``manage.py serve`` processes on the test DB."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_platform.processes import http_wait
from observability import telemetry
from tests import live


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory (the in-process path, no export child)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.setup(provider=provider)
    try:
        yield exporter
    finally:
        telemetry.teardown()


@contextmanager
def served(tmp: Path, *, port: int | None = None, **env: str) -> Iterator[live.Server]:
    """One ``manage.py serve`` process; stopped with SIGTERM (then killed) when the block ends."""
    port = port or live.free_port()
    log = tmp / f"serve-{port}.log"
    args = [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = live.spawn(args, out=out, env=live.child_env(**env))
    server = live.Server(f"http://127.0.0.1:{port}", process, log)
    try:
        http_wait(f"{server.url}/healthz", process)
        yield server
    finally:
        server.stop()
        if os.environ.get("SHOW_SERVER_LOGS"):
            sys.stderr.write(log.read_text())
