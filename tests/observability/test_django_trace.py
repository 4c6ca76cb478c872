"""Django's views (the /v1 API on ninja, the admin) are traced under ASGI: one server span per request."""

from __future__ import annotations

import asyncio

from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.asgi import http_scope

TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"
CALLER_SPAN_ID = "051581bf3cb55c13"


async def _get(path: str, headers: list[tuple[bytes, bytes]]) -> int:
    # A handler built after setup, as the ASGI entry point builds it: the instrumentation's
    # middleware is in its chain.
    scope = http_scope("GET", path, headers)
    communicator = ApplicationCommunicator(ASGIHandler(), scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    while (await communicator.receive_output(10)).get("more_body"):
        pass
    await communicator.wait(10)
    return int(start["status"])


def _server_spans(exporter: InMemorySpanExporter) -> list:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]


def test_an_api_view_is_a_server_span_continuing_the_callers_trace(spans, owner_key):
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01".encode()
    headers = [(b"authorization", f"Bearer {owner_key.secret}".encode()), (b"traceparent", traceparent)]
    spans.clear()  # the fixtures' own queries (creating the tenant and key) are traced too
    assert asyncio.run(_get("/v1/models", headers)) == 200
    [server] = _server_spans(spans)
    assert server.name == "GET v1/models"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    attributes = server.attributes or {}
    assert attributes["http.route"] == "v1/models"
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 200
    # Its database work is in the same trace, under it (psycopg on PostgreSQL; nothing on SQLite),
    # also the reads that run on the hot-path read threads. Only background work on Redis (the
    # change poller's MGET of the shared epochs, the channel layer) is a trace of its own.
    for span in spans.get_finished_spans():
        if span.context.trace_id != server.context.trace_id:
            assert span.parent is None and (span.attributes or {}).get("db.system") == "redis", span.name


def test_an_admin_page_is_traced_with_its_status(spans, transactional_db):
    spans.clear()
    assert asyncio.run(_get("/admin/login/", [])) == 200
    [server] = _server_spans(spans)
    assert server.name == "GET admin/login/"
    assert server.parent is None, "no traceparent: a new trace"
