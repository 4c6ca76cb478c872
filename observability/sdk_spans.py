"""Our spans as regular OpenTelemetry SDK spans, through the public API only (``OTEL_FAST_PATH=false``).

The reference the fast path (``lean_spans``) is measured and tested against: same names,
kinds, parents, attributes and status, with the SDK's own span objects, context handling,
propagators and processors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from observability.span_api import Span, header_getter


class SdkSpan:
    """An SDK span made current until it ends."""

    __slots__ = ("span", "token")

    def __init__(self, span_: trace.Span) -> None:
        self.span = span_
        self.token = otel_context.attach(trace.set_span_in_context(span_))

    @property
    def trace_id(self) -> int:
        return self.span.get_span_context().trace_id

    @property
    def span_id(self) -> int:
        return self.span.get_span_context().span_id

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes(attributes)

    def fail(self, description: str = "") -> None:
        self.span.set_status(Status(StatusCode.ERROR, description or None))

    def end(self) -> None:
        try:
            otel_context.detach(self.token)
        finally:
            self.span.end()


class SdkSpans:
    """Spans from an SDK tracer; its provider's processors export them."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind, root: bool) -> Span | None:
        if not root:
            parent = trace.get_current_span().get_span_context()
            if not parent.is_valid or not parent.trace_flags.sampled:
                return None
        span_ = self.tracer.start_span(name, kind=kind, attributes=attributes)
        # As on the fast path, an unsampled span is not made current: nothing under it is recorded either.
        return SdkSpan(span_) if span_.is_recording() else None

    def server(
        self, name: str, attributes: dict[str, Any], headers: Mapping[bytes, bytes]
    ) -> tuple[Span | None, SdkSpan | None]:
        # Extracted into a fresh context: without traceparent, a new trace, whatever is current.
        parent_context = propagate.extract(headers, getter=header_getter)
        span_ = SdkSpan(self.tracer.start_span(name, parent_context, SpanKind.SERVER, attributes))
        return (span_, None) if span_.span.is_recording() else (None, span_)

    def inject(self, headers: dict[str, str]) -> None:
        propagate.inject(headers)

    def current_trace_id(self) -> str:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else ""
