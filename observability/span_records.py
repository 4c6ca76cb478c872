"""Finished spans as compact records, and the in-process ways between records and the SDK's span processors.

A record is::

    (trace_id, span_id, parent_id, parent_remote, name, kind, start_ns, end_ns,
     attributes, status_code, status_message, scope, events, flags, trace_state)

with ``kind`` and ``status_code`` the SDK's enum values, ``events`` a tuple of
``(name, time_ns, attributes)`` and ``trace_state`` its W3C header form. Lean spans
(``lean_spans``) end as records; the official instrumentations' SDK spans become records
through ``SpanProcessorToSink``. A sink takes records: ``span_export.ChildSink`` (the
export child) or ``ProviderSink`` (an SDK provider's processors, in process).
"""

from __future__ import annotations

from typing import Any

Record = tuple[Any, ...]


def record_from_span(span: Any) -> Record:
    """The record of a finished SDK span (from the official instrumentations)."""
    context = span.context
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    return (
        context.trace_id,
        context.span_id,
        parent.span_id if parent is not None else 0,
        bool(parent is not None and parent.is_remote),
        span.name,
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        status.status_code.value,
        status.description or "",
        scope.name if scope is not None else "",
        tuple((event.name, event.timestamp, dict(event.attributes or {})) for event in span.events),
        int(context.trace_flags),
        context.trace_state.to_header() if context.trace_state else "",
    )


def span_from_record(record: Record, resource: Any) -> Any:
    """A ``ReadableSpan`` from a record, for SDK span processors (tests, the console exporter)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    (
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
    ) = record
    trace_state = TraceState.from_header([state]) if state else None
    context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
    parent = SpanContext(trace_id, parent_id, remote, TraceFlags(flags), trace_state) if parent_id else None
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(event_name, event_attributes, timestamp) for event_name, timestamp, event_attributes in events],
        kind=SpanKind(kind),
        instrumentation_scope=InstrumentationScope(scope),
        status=Status(StatusCode(code), message or None),
        start_time=start,
        end_time=end,
    )


class SpanProcessorToSink:
    """An SDK span processor that turns finished SDK spans into records for a sink."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: Any) -> None:
        if span.context.trace_flags.sampled:
            self.sink.put(record_from_span(span))

    def _on_ending(self, span: Any) -> None:  # the SDK calls this on processors that have it
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class ProviderSink:
    """Records handed to an SDK ``TracerProvider``'s span processors, in process (tests, console)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def put(self, record: Record) -> None:
        self.provider._active_span_processor.on_end(span_from_record(record, self.provider.resource))

    def flush(self, timeout_s: float = 5.0) -> None:
        self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
