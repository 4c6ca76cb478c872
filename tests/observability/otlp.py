"""A local OTLP/HTTP traces endpoint for the tests, and decoding what it receives."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


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


def otlp_value(any_value: Any) -> Any:
    """A decoded ``AnyValue`` as a Python value (an array as a list)."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [otlp_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind)
