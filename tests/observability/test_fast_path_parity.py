"""``OTEL_FAST_PATH`` on and off export the same OTLP: lean spans and our encoder, or the SDK's spans and exporter."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

from observability import lean_spans, telemetry
from observability.span_export import ChildSink
from routing import genai_spans
from tests.observability.otlp import Collector, otlp_value

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


class Untouchable:
    """Stands in for the API's private context variable: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the private OpenTelemetry context was used ({name})")


def _request() -> dict[str, str]:
    """A failed streamed chat completion's spans, as the gateway makes them; returns the provider call's headers."""
    server = telemetry.server_span(
        "/v1/chat/completions",
        "POST",
        {b"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01".encode(), b"tracestate": b"vendor=opaque"},
    )
    assert server is not None and server.trace_id == TRACE_ID
    with telemetry.span("key.authenticate"):
        pass
    with telemetry.span("route.select", {"llmp.route.requested_model": "gpt-4o-mini"}):
        pass
    call = genai_spans.model_call_start(
        operation="chat",
        system="openai",
        request_model="gpt-4o-mini",
        upstream_model="gpt-4o-mini-2024-07-18",
        payload={"temperature": 0.5, "max_tokens": 50, "stop": ["END"], "seed": True},
        stream=True,
        server_address="api.example",
        routing={"strategy": "least-busy", "candidates": ("a", "b"), "fallbacks": 1, "unset": None},
        content=[{"role": "user", "content": "hello"}],
    )
    assert call is not None
    provider_headers: dict[str, str] = {}
    telemetry.inject(provider_headers)
    assert telemetry.current_trace_id() == TRACE_ID
    # A span of an official instrumentation (an SDK span, with an event) under ours.
    provider = telemetry.tracing().provider
    tracer = provider.get_tracer("opentelemetry.instrumentation.example")
    with tracer.start_as_current_span("connect", kind=SpanKind.CLIENT, attributes={"net.peer.port": 443}) as sdk:
        sdk.add_event("retry", {"attempt": 2, "reason": "reset"})
    with pytest.raises(ConnectionError), telemetry.span("stream.relay"):
        raise ConnectionError("upstream closed the stream")
    call.end(
        status=502,
        response_model="gpt-4o-mini-2024-07-18",
        input_tokens=12,
        output_tokens=3,
        usage_estimated=True,
        error_type="upstream_error",
        ttfb_s=0.25,
        output=[{"role": "assistant", "content": "hi"}],
    )
    server.set(**{"llmp.request_id": "req-1", "llmp.tenant": "acme"})
    server.end(502)
    assert telemetry.current_trace_id() == ""
    return provider_headers


def _exported(
    fast: bool, collector: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], dict[str, Any], dict[str, dict[str, Any]]]:
    """The request's spans exported through one path and decoded: everything but ids and times, by span name."""
    settings.OTEL_FAST_PATH = fast
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "parity")
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)  # the process-wide one stays as it is
    if not fast:
        monkeypatch.setattr(lean_spans, "_context_var", Untouchable())
    Collector.received = []
    assert telemetry.setup(service="parity", instrument=False)
    try:
        assert isinstance(telemetry.tracing().sink, ChildSink) is fast
        provider_headers = _request()
        telemetry.shutdown(10)
    finally:
        telemetry.teardown()
    return _decoded(Collector.received, provider_headers)


def _decoded(
    requests: list[ExportTraceServiceRequest], provider_headers: dict[str, str]
) -> tuple[dict[str, str], dict[str, Any], dict[str, dict[str, Any]]]:
    """The resource, the spans by name, and the provider call's trace context with its parent's name for its id."""
    resource: dict[str, Any] = {}
    found = []

    def attributes(pairs: Any) -> dict[str, Any]:
        return {kv.key: otlp_value(kv.value) for kv in pairs}

    for request in requests:
        for resource_spans in request.resource_spans:
            resource.update(attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                found.extend((scope_spans.scope.name, span) for span in scope_spans.spans)
    names = {span.span_id: span.name for _, span in found}
    names[bytes.fromhex(CALLER_SPAN_ID)] = "the caller"
    spans = {}
    for scope, span in found:
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0, span.name
        spans[span.name] = {
            "scope": scope,
            "trace_id": span.trace_id.hex(),
            "trace_state": span.trace_state,
            "parent": names.get(span.parent_span_id, span.parent_span_id.hex()),
            "parent_remote": span.flags & 0x300,
            "kind": span.kind,
            "attributes": attributes(span.attributes),
            "events": [(event.name, attributes(event.attributes)) for event in span.events],
            "status": (span.status.code, span.status.message),
        }
    version, trace_id, parent_id, flags = provider_headers.pop("traceparent").split("-")
    provider_headers["traceparent"] = f"{version}-{trace_id}-{names[bytes.fromhex(parent_id)]}-{flags}"
    return provider_headers, resource, spans


def test_the_fast_path_and_the_sdk_export_the_same_spans(collector, settings, monkeypatch):
    fast_headers, fast_resource, fast = _exported(True, collector, settings, monkeypatch)
    sdk_headers, sdk_resource, sdk = _exported(False, collector, settings, monkeypatch)
    # Each provider draws its own instance id.
    assert fast_resource.pop("service.instance.id") and sdk_resource.pop("service.instance.id")
    assert fast_resource == sdk_resource and fast_resource["service.name"] == "parity"
    assert set(fast) == {
        "POST /v1/chat/completions",
        "key.authenticate",
        "route.select",
        "chat gpt-4o-mini",
        "connect",
        "stream.relay",
    }
    for name in fast:
        assert fast[name] == sdk[name], name
    assert set(sdk) == set(fast)
    # What the two paths agree on is what the gateway promises: spot-check it.
    server, model_call, relay = fast["POST /v1/chat/completions"], fast["chat gpt-4o-mini"], fast["stream.relay"]
    assert server["parent"] == "the caller" and server["parent_remote"] == 0x300 and server["kind"] == 2
    assert server["trace_id"] == TRACE_ID and server["trace_state"] == "vendor=opaque"
    assert server["status"] == (2, "") and server["attributes"]["http.response.status_code"] == 502
    assert model_call["parent"] == "POST /v1/chat/completions" and model_call["kind"] == 3
    assert model_call["status"] == (2, "upstream_error")
    assert model_call["attributes"]["gen_ai.request.stop_sequences"] == ["END"]
    assert model_call["attributes"]["llmp.route.candidates"] == ["a", "b"]
    assert "gen_ai.request.seed" not in model_call["attributes"]  # a bool is not a seed
    assert relay["parent"] == "chat gpt-4o-mini"
    assert relay["status"] == (2, "ConnectionError: upstream closed the stream")
    assert relay["attributes"] == {"error.type": "ConnectionError"}
    assert fast["connect"]["events"] == [("retry", {"attempt": 2, "reason": "reset"})]
    assert fast["connect"]["parent"] == "chat gpt-4o-mini"
    assert fast["connect"]["scope"] == "opentelemetry.instrumentation.example"
    # The provider call continues the trace under the model-call span.
    assert fast_headers == sdk_headers
    assert fast_headers == {"traceparent": f"00-{TRACE_ID}-chat gpt-4o-mini-01", "tracestate": "vendor=opaque"}
