"""Observability test fixtures: spans kept in memory, and live ``manage.py serve`` processes on the test DB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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


# One ``manage.py serve`` process; stopped with SIGTERM (then killed) when the block ends.
served = live.served
