"""The fast path's spans: ids we draw, times and an attribute dict, a compact record for a sink when they end.

Cheaper than SDK spans by an order of magnitude. The OpenTelemetry context is read and
written on every span; the API's ``attach`` and ``get_current_span`` cost several calls
each, so the context variable behind them (the default contextvars runtime context, a
private attribute of the API) is used directly when it is there, with the same semantics.
``OTEL_FAST_PATH=false`` records regular SDK spans instead (``sdk_spans``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY

from observability.span_api import TRACER_NAME, Span, header_getter
from observability.span_records import Record

logger = logging.getLogger(__name__)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_ERROR = 2  # StatusCode.ERROR
_getrandbits = random.getrandbits

_context_var: Any = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)


def _attach(span_: Any) -> Any:
    if _context_var is None:
        return otel_context.attach(trace.set_span_in_context(span_))
    current = _context_var.get()
    new = Context(current)
    dict.__setitem__(new, _SPAN_KEY, span_)
    return _context_var.set(new)


def _detach(token: Any) -> None:
    if _context_var is None:
        otel_context.detach(token)
        return
    try:
        _context_var.reset(token)
    except ValueError:  # ended in another task than it started in: leave that task's context alone
        logger.debug("span context token from another context", exc_info=True)


def _current_span() -> Any:
    """The current span object (``None`` when there is none): often a ``LeanSpan``."""
    if _context_var is None:
        return trace.get_current_span()
    return _context_var.get().get(_SPAN_KEY)


class LeanSpan(NonRecordingSpan):
    """A span of ours while it runs: ids, times and attributes; a record for the sink when it ends.

    It is itself the current span in the OpenTelemetry context, so the official
    instrumentations see it (as a non-recording span whose ``SpanContext`` is built only if
    someone asks) and parent their spans on it.
    """

    __slots__ = (
        "attributes",
        "built",
        "kind",
        "message",
        "name",
        "parent_id",
        "put",
        "remote",
        "span_id",
        "start",
        "state",
        "status",
        "token",
        "trace_id",
    )

    def __init__(
        self,
        put: Callable[[Record], None],
        name: str,
        kind: int,
        attributes: dict[str, Any],
        trace_id: int,
        parent_id: int,
        remote: bool,
        state: Any,
    ) -> None:
        self.put = put
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.trace_id = trace_id
        self.span_id = _getrandbits(64) or 1
        self.parent_id = parent_id
        self.remote = remote
        self.state = state
        self.status = 0
        self.message = ""
        self.built: SpanContext | None = None  # the API's form of its context, made when first asked for
        self.start = time.time_ns()
        self.token = _attach(self)

    def get_span_context(self) -> SpanContext:
        context = self.built
        if context is None:
            context = self.built = SpanContext(self.trace_id, self.span_id, False, _SAMPLED, self.state)
        return context

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def __repr__(self) -> str:
        return f"LeanSpan({self.name!r}, trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"

    def fail(self, description: str = "") -> None:
        self.status, self.message = _ERROR, description

    def end(self, end_time: int | None = None) -> None:
        try:
            _detach(self.token)
        finally:
            self.put(
                (
                    self.trace_id,
                    self.span_id,
                    self.parent_id,
                    self.remote,
                    self.name,
                    self.kind,
                    self.start,
                    end_time or time.time_ns(),
                    self.attributes,
                    self.status,
                    self.message,
                    TRACER_NAME,
                    (),
                    1,
                    self.state.to_header() if self.state else "",
                )
            )


class Attached:
    """An unsampled request's context, current until ``end``: the trace decision travels on, nothing is recorded."""

    __slots__ = ("token",)

    def __init__(self, context: SpanContext) -> None:
        self.token = _attach(NonRecordingSpan(context))

    def end(self) -> None:
        _detach(self.token)


class LeanSpans:
    """Lean spans recorded to a sink (the export child, or a provider's processors); roots sampled by its sampler."""

    def __init__(self, put: Callable[[Record], None], sampler: Any) -> None:
        self.put = put
        self.sampler = sampler

    def start(self, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind, root: bool) -> Span | None:
        current = _current_span()
        if type(current) is LeanSpan:  # the usual case: a span of ours (always sampled) is current
            trace_id, parent_id, state = current.trace_id, current.span_id, current.state
        else:
            parent = trace.INVALID_SPAN_CONTEXT if current is None else current.get_span_context()
            if parent.is_valid:
                if not parent.trace_flags.sampled:
                    return None  # an unsampled trace gets no child spans at all
                trace_id, parent_id, state = parent.trace_id, parent.span_id, parent.trace_state
            elif not root:
                return None
            else:
                trace_id, parent_id = _getrandbits(128) or 1, 0
                result = self.sampler.should_sample(None, trace_id, name, kind, attributes)
                if not result.decision.is_sampled():
                    return None
                state = result.trace_state
        return LeanSpan(self.put, name, kind.value, dict(attributes or ()), trace_id, parent_id, False, state)

    def server(
        self, name: str, attributes: dict[str, Any], headers: Mapping[bytes, bytes]
    ) -> tuple[Span | None, Attached | None]:
        if b"traceparent" in headers:
            parent_context: Any = propagate.extract(headers, getter=header_getter)
            parent = trace.get_current_span(parent_context).get_span_context()
        else:
            parent_context, parent = None, trace.INVALID_SPAN_CONTEXT
        trace_id = parent.trace_id if parent.is_valid else (_getrandbits(128) or 1)
        result = self.sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER)
        state = result.trace_state if result.trace_state is not None else parent.trace_state
        if not result.decision.is_sampled():
            return None, Attached(SpanContext(trace_id, _getrandbits(64) or 1, False, _UNSAMPLED, state))
        span_ = LeanSpan(
            self.put,
            name,
            SpanKind.SERVER.value,
            attributes,
            trace_id,
            parent.span_id if parent.is_valid else 0,
            parent.is_remote,
            state,
        )
        return span_, None

    def inject(self, headers: dict[str, str]) -> None:
        current = _current_span()
        if type(current) is LeanSpan:
            headers["traceparent"] = f"00-{current.trace_id:032x}-{current.span_id:016x}-01"
            if current.state:
                headers["tracestate"] = current.state.to_header()
            return
        context = trace.INVALID_SPAN_CONTEXT if current is None else current.get_span_context()
        if context.is_valid:
            headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            if context.trace_state:
                headers["tracestate"] = context.trace_state.to_header()

    def current_trace_id(self) -> str:
        current = _current_span()
        context = trace.INVALID_SPAN_CONTEXT if current is None else current.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else ""
