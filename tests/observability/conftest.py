"""Observability test fixtures: spans kept in memory (on both span paths), a local OTLP collector, live servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import telemetry
from tests import live


@pytest.fixture(params=["fast_path", "sdk_spans"])
def spans(request: pytest.FixtureRequest, settings: Any) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory; once with lean spans, once with the SDK's own."""
    settings.OTEL_FAST_PATH = request.param == "fast_path"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.setup(provider=provider)
    try:
        yield exporter
    finally:
        telemetry.teardown()


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps every request it is sent."""

    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        Collector.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        return


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


def otlp_value(any_value: Any) -> Any:
    """A decoded ``AnyValue`` as a Python value (an array as a list)."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [otlp_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind)


# One ``manage.py serve`` process; stopped with SIGTERM (then killed) when the block ends.
served = live.served
