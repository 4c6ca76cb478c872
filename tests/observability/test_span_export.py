"""The production export path: lean spans in the server, OTLP encoded by a child process, flushed at drain."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from observability import otlp_encoding, span_export, span_records
from tests.live import served
from tests.observability.otlp import Collector, otlp_value

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
PROMPT = "the launch codes are hunter2"


def _exported_names() -> set[str]:
    """The names of every span the collector received."""
    return {
        span.name
        for request in Collector.received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }


def _spans(trace_id: str) -> dict[str, tuple[Any, dict[str, Any], dict[str, Any]]]:
    """The spans of one trace by name (the server traces other things too, such as its health checks)."""
    out = {}
    for request in Collector.received:
        for resource_spans in request.resource_spans:
            resource = {kv.key: otlp_value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.trace_id.hex() != trace_id:
                        continue
                    out[span.name] = (span, {kv.key: otlp_value(kv.value) for kv in span.attributes}, resource)
    return out


def test_spans_of_a_request_reach_the_collector_as_otlp_by_the_time_the_server_has_drained(
    session_tmp, upstream, owner_key, deployment_factory, collector
):
    deployment_factory()
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "max_tokens": 50,'
        b' "messages": [{"role": "user", "content": "' + PROMPT.encode() + b' [[fake chunks=3]]"}]}'
    )
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector,
        "OTEL_SERVICE_NAME": "gateway-under-test",
    }
    with served(session_tmp, **env) as server:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            content=body,
            headers={
                "Authorization": f"Bearer {owner_key.secret}",
                "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
            },
            timeout=30,
        )
        assert response.status_code == 200
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert server.process.returncode == 0
    spans = _spans(TRACE_ID)  # nothing waited for: the drain itself exported them
    server_span, server_attributes, resource = spans["POST /v1/chat/completions"]
    assert resource["service.name"] == "gateway-under-test"
    assert server_span.trace_id.hex() == TRACE_ID
    assert server_span.parent_span_id.hex() == PARENT_SPAN_ID
    assert server_span.kind == 2  # SERVER in OTLP's numbering
    assert server_attributes["http.response.status_code"] == 200
    assert server_attributes["llmp.request_id"] == response.headers["x-request-id"]
    model_call, attributes, _ = spans["chat gpt-4o-mini"]
    assert model_call.kind == 3  # CLIENT
    assert model_call.parent_span_id == server_span.span_id
    assert spans["key.authenticate"][0].parent_span_id == server_span.span_id
    assert spans["route.select"][0].parent_span_id == server_span.span_id
    assert spans["stream.relay"][0].parent_span_id == model_call.span_id
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["llmp.stream"] is True
    assert model_call.end_time_unix_nano >= model_call.start_time_unix_nano > 0
    for span, span_attributes, _ in spans.values():
        assert all(PROMPT not in str(value) for value in span_attributes.values()), span.name


def test_records_of_sdk_spans_and_lean_spans_encode_alike():
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    sdk_span = provider.get_tracer("t").start_span("x", attributes={"a": 1, "b": ["c", "d"], "e": 0.5, "f": True})
    sdk_span.add_event("retry", {"attempt": 2})
    sdk_span.end()
    record = span_records.record_from_span(sdk_span)
    request = ExportTraceServiceRequest()
    request.ParseFromString(otlp_encoding.encode([record], {"service.name": "s"}))
    [span] = request.resource_spans[0].scope_spans[0].spans
    assert span.span_id == sdk_span.context.span_id.to_bytes(8, "big")
    assert {kv.key: otlp_value(kv.value) for kv in span.attributes}["e"] == 0.5
    assert [otlp_value(v) for v in span.attributes[1].value.array_value.values] == ["c", "d"]
    assert span.events[0].name == "retry" and span.kind == 1
    back = span_records.span_from_record(record, provider.resource)
    assert (back.name, back.context, back.attributes["b"], back.end_time) == (
        "x",
        sdk_span.context,
        ("c", "d"),
        sdk_span.end_time,
    )


def _reference(records: list[tuple], resource: dict[str, Any]) -> ExportTraceServiceRequest:
    """The same request built with the protobuf classes, field by field."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def value(item: Any) -> AnyValue:
        if isinstance(item, bool):
            return AnyValue(bool_value=item)
        if isinstance(item, int):
            return AnyValue(int_value=item)
        if isinstance(item, float):
            return AnyValue(double_value=item)
        if isinstance(item, str):
            return AnyValue(string_value=item)
        return AnyValue(array_value=ArrayValue(values=[value(inner) for inner in item]))

    def pairs(attributes: dict[str, Any]) -> list[KeyValue]:
        return [KeyValue(key=key, value=value(item)) for key, item in attributes.items()]

    scopes: dict[str, list[Span]] = {}
    for (
        trace_id,
        span_id,
        parent_id,
        remote,
        name,
        kind,
        start,
        end,
        attributes,
        code,
        message,
        scope,
        events,
        flags,
        state,
    ) in records:
        span = Span(
            trace_id=trace_id.to_bytes(16, "big"),
            span_id=span_id.to_bytes(8, "big"),
            trace_state=state,
            parent_span_id=parent_id.to_bytes(8, "big") if parent_id else b"",
            name=name,
            kind=kind + 1,
            start_time_unix_nano=start,
            end_time_unix_nano=end,
            attributes=pairs(attributes),
            flags=flags | 0x100 | (0x200 if remote else 0),
        )
        for event_name, timestamp, event_attributes in events:
            span.events.add(time_unix_nano=timestamp, name=event_name, attributes=pairs(event_attributes))
        if code:
            span.status.CopyFrom(Status(code=code, message=message))
        scopes.setdefault(scope, []).append(span)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=pairs(resource)),
                scope_spans=[
                    ScopeSpans(scope=InstrumentationScope(name=name), spans=spans) for name, spans in scopes.items()
                ],
            )
        ]
    )


def test_the_hand_written_otlp_encoding_equals_the_protobuf_classes():
    attributes = {
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": 300,
        "negative": -7,
        "big": 2**62,
        "flag": True,
        "off": False,
        "one": 1,
        "stops": ["\n", "END"],
        "numbers": [1, 2],
        "text": "naïve ✓ " * 40,  # long enough for a two-byte length
    }
    records = [
        (
            2**127 + 5,
            2**63 + 1,
            0,
            False,
            "POST /v1/chat/completions",
            1,
            10**18,
            10**18 + 5,
            attributes,
            0,
            "",
            "a",
            (),
            1,
            "",
        ),
        (3, 4, 2**63 + 1, True, "chat gpt-4o-mini", 2, 5, 6, {"one": True}, 2, "upstream_error", "a", (), 1, "k=v"),
        (3, 6, 4, False, "SELECT", 2, 7, 8, {}, 1, "", "psycopg", (("retry", 9, {"attempt": 2}),), 1, ""),
    ]
    for _ in range(2):  # the second time from the attribute cache
        encoded = ExportTraceServiceRequest()
        encoded.ParseFromString(otlp_encoding.encode(records, {"service.name": "gateway"}))
        assert encoded == _reference(records, {"service.name": "gateway"})


def test_a_forked_process_exports_its_spans_through_an_exporter_of_its_own(collector, monkeypatch):
    import os

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector)
    sink = span_export.ChildSink("fork-test")
    record = (7, 8, 0, False, "{}", 0, 1, 2, {}, 0, "", "test", (), 1, "")
    pid = os.fork()
    if pid == 0:  # the child, as a prefork worker would be after the fork
        code = 1
        try:
            sink.put((*record[:4], "in the child", *record[5:]))
            sink.shutdown(10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.put((*record[:4], "in the parent", *record[5:]))
    sink.shutdown(10)
    names = _exported_names()
    assert names == {"in the child", "in the parent"}


def test_a_dead_exporter_child_is_replaced_and_later_spans_still_arrive(collector, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    sink = span_export.ChildSink("respawn-test")
    record = (7, 8, 0, False, "{}", 0, 1, 2, {}, 0, "", "test", (), 1, "")
    first = sink._process
    assert first is not None
    first.kill()  # as an OOM kill or a crash would
    first.wait()
    deadline = time.monotonic() + 30
    while sink._process is first and time.monotonic() < deadline:
        sink.put((*record[:4], "lost or not", *record[5:]))  # the write that finds the pipe broken
        time.sleep(0.05)
    assert sink._process is not first, "the exporter child was not replaced"
    sink.put((*record[:4], "after the restart", *record[5:]))
    sink.shutdown(10)
    names = _exported_names()
    assert "after the restart" in names
