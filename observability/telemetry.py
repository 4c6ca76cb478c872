"""OpenTelemetry tracing: set up from the standard ``OTEL_*`` variables, off unless an exporter is named.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and
``OTEL_SDK_DISABLED`` is not true. Sampling, the service name, resource attributes and the
OTLP endpoint, headers and timeouts are read by the SDK itself from the usual variables.

When tracing is off, ``span`` returns one shared no-op context manager and the model-call
helpers return ``None``: a dictionary lookup and a call, no allocation of spans.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY

from observability import span_export

logger = logging.getLogger(__name__)

_enabled = False
_sink: Any = None  # where finished spans go: span_export.ChildSink, or ProviderSink in tests
_sampler: Any = None
_NOOP = contextlib.nullcontext(None)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_OK, _ERROR = 1, 2  # StatusCode values
_getrandbits = random.getrandbits

TRACER_NAME = "llm_platform"
CONTENT_LIMIT = 16_384  # characters of prompt or completion kept on a span


def enabled() -> bool:
    return _enabled


def wanted() -> bool:
    """Whether the environment asks for tracing (see the module docstring)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporter_names() -> list[str]:
    names = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    for name in names:
        if name not in ("otlp", "console"):
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported here; use otlp, console or none "
                "(OTLP over HTTP/protobuf; point OTEL_EXPORTER_OTLP_ENDPOINT at a collector)."
            )
    return names


def setup(*, service: str = "llm-platform", provider: Any = None, instrument: bool = True) -> bool:
    """Turn tracing on when the environment asks for it (or when ``provider`` is given, in tests).

    Idempotent. Returns whether tracing is on. ``service`` is the default for
    ``service.name``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win.

    With the OTLP exporter (the production case), spans are exported by a child process
    (``span_export``); with ``console``, or a ``provider`` given, through the SDK's processors.
    """
    global _enabled, _sink, _sampler
    if _enabled:
        return True
    if provider is not None:
        _sink = span_export.ProviderSink(provider)
    else:
        if not wanted():
            return False
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        names = _exporter_names()
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
        provider = TracerProvider(resource=Resource.create(attributes))
        if names == ["otlp"]:
            _sink = span_export.ChildSink(service)
            # The official instrumentations' spans take the same way out.
            provider.add_span_processor(span_export.SpanProcessorToSink(_sink))  # type: ignore[arg-type]
        else:
            for name in names:
                if name == "otlp":
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
                else:
                    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            _sink = span_export.ProviderSink(provider)
        trace.set_tracer_provider(provider)
        atexit.register(shutdown)
    _sampler = provider.sampler
    _enabled = True
    if instrument:
        _instrument(provider)
    logger.info("tracing on (service %s)", service)
    return True


def _instrumentors() -> list[Any]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return [DjangoInstrumentor(), RedisInstrumentor(), PsycopgInstrumentor(), CeleryInstrumentor()]


def _instrument(provider: Any) -> None:
    """The official instrumentations: Django views (ASGI), Redis, psycopg and Celery.

    The upstream HTTP call has no client span of its own: the model-call span is that call,
    and ``traceparent`` is put on its request directly (``inject``).
    """
    for instrumentor in _instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            try:
                instrumentor.instrument(tracer_provider=provider)
            except Exception:  # a missing optional peer must not stop the server
                logger.exception("could not instrument %s", type(instrumentor).__name__)


def teardown() -> None:
    """Switch tracing off again and remove the instrumentation (for tests)."""
    global _enabled, _sink, _sampler
    for instrumentor in _instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _enabled = False
    _sink = _sampler = None


def shutdown(timeout_s: float = 5.0) -> None:
    """Export buffered spans and wait for the export (at drain / exit)."""
    sink = _sink
    if _enabled and sink is not None:
        sink.shutdown(timeout_s)
        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None and not isinstance(sink, span_export.ProviderSink):
            force_flush(int(timeout_s * 1000))


# The OpenTelemetry context is read and written on every span of ours. The API's attach and
# get_current_span cost several calls each; the context variable behind them (the default
# contextvars runtime context) is used directly when it is there, with the same semantics.
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
    """The current span object (``None`` when there is none): often a ``LeanSpan`` of ours."""
    if _context_var is None:
        return trace.get_current_span()
    return _context_var.get().get(_SPAN_KEY)


def _current() -> SpanContext:
    span_ = _current_span()
    return trace.INVALID_SPAN_CONTEXT if span_ is None else span_.get_span_context()


class LeanSpan(NonRecordingSpan):
    """A span of ours while it runs: ids, times and attributes; a record for the sink when it ends.

    Cheaper than an SDK span by an order of magnitude. It is itself the current span in the
    OpenTelemetry context, so the official instrumentations see it (as a non-recording span
    whose ``SpanContext`` is built only if someone asks) and parent their spans on it.
    """

    __slots__ = (
        "attributes",
        "built",
        "kind",
        "message",
        "name",
        "parent_id",
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
        name: str,
        kind: int,
        attributes: dict[str, Any],
        trace_id: int,
        parent_id: int,
        remote: bool,
        state: Any,
    ) -> None:
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
            _sink.put(
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


def _child(name: str, attributes: Mapping[str, Any] | None, kind: SpanKind) -> LeanSpan | None:
    """A child of the current span when that one is sampled; a new sampled root when there is none."""
    current = _current_span()
    if type(current) is LeanSpan:  # the usual case: a span of ours (always sampled) is current
        return LeanSpan(
            name, kind.value, dict(attributes or ()), current.trace_id, current.span_id, False, current.state
        )
    parent = trace.INVALID_SPAN_CONTEXT if current is None else current.get_span_context()
    if parent.is_valid:
        if not parent.trace_flags.sampled:
            return None  # an unsampled trace gets no child spans at all
        return LeanSpan(
            name, kind.value, dict(attributes or ()), parent.trace_id, parent.span_id, False, parent.trace_state
        )
    trace_id = _getrandbits(128) or 1
    result = _sampler.should_sample(None, trace_id, name, kind, attributes)
    if not result.decision.is_sampled():
        return None
    return LeanSpan(name, kind.value, dict(attributes or ()), trace_id, 0, False, result.trace_state)


class _Scope:
    """``span()`` while tracing is on: the span is current inside the block, ended (with errors noted) after it."""

    __slots__ = ("attributes", "kind", "name", "span")

    def __init__(self, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind) -> None:
        self.name, self.attributes, self.kind = name, attributes, kind
        self.span: LeanSpan | None = None

    def __enter__(self) -> LeanSpan | None:
        self.span = _child(self.name, self.attributes, self.kind)
        return self.span

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        span_ = self.span
        if span_ is None:
            return
        if exc is not None and not isinstance(exc, GeneratorExit):
            span_.fail(f"{exc_type.__name__}: {exc}")
            span_.attributes["error.type"] = exc_type.__qualname__
        span_.end()


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, as a context manager; a shared no-op when tracing is off."""
    if not _enabled:
        return _NOOP
    return _Scope(name, attributes, kind)


class _HeaderGetter(Getter[Mapping[bytes, bytes]]):
    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [name.decode("latin-1") for name in carrier]


_getter = _HeaderGetter()


class ServerSpan:
    """The server span of a request served outside Django's view stack (the Channels consumers).

    Continues the caller's trace from ``traceparent``/``tracestate`` in the ASGI headers,
    and is the current span until ``end``. Start and end must happen in the same task.
    An unsampled request records nothing, but its context is current, so the trace
    decision travels on with ``traceparent``.
    """

    __slots__ = ("span", "token")

    def __init__(self, span_: LeanSpan | None, token: object = None) -> None:
        self.span = span_
        self.token = token

    @property
    def trace_id(self) -> str:
        """This request's trace id as 32 hex digits, ``""`` when it is not sampled."""
        return "" if self.span is None else f"{self.span.trace_id:032x}"

    def set(self, **attributes: Any) -> None:
        if self.span is not None:
            self.span.attributes.update(attributes)

    def end(self, status: int) -> None:
        span_ = self.span
        if span_ is None:
            _detach(self.token)
            return
        span_.attributes["http.response.status_code"] = status
        if status >= 500:
            span_.status = _ERROR
        span_.end()


def server_span(route: str, method: str, headers: Mapping[bytes, bytes]) -> ServerSpan | None:
    if not _enabled:
        return None
    name = f"{method} {route}"
    if b"traceparent" in headers:
        parent_context: Any = propagate.extract(headers, getter=_getter)
        parent = trace.get_current_span(parent_context).get_span_context()
    else:
        parent_context, parent = None, trace.INVALID_SPAN_CONTEXT
    trace_id = parent.trace_id if parent.is_valid else (_getrandbits(128) or 1)
    result = _sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER)
    state = result.trace_state if result.trace_state is not None else parent.trace_state
    if not result.decision.is_sampled():
        context = SpanContext(trace_id, _getrandbits(64) or 1, False, _UNSAMPLED, state)
        return ServerSpan(None, _attach(NonRecordingSpan(context)))
    attributes = {"http.request.method": method, "http.route": route, "url.path": route}
    return ServerSpan(
        LeanSpan(
            name,
            1,  # SpanKind.SERVER
            attributes,
            trace_id,
            parent.span_id if parent.is_valid else 0,
            parent.is_remote,
            state,
        )
    )


def inject(headers: dict[str, str]) -> None:
    """Put the current trace context on an outgoing request's headers (``traceparent``, ``tracestate``)."""
    if not _enabled:
        return
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


class ModelCall:
    """The GenAI client span of one model call: started before the upstream call, ended at accounting."""

    __slots__ = ("span", "token")

    def __init__(self, span_: LeanSpan) -> None:
        self.span = span_

    def end(
        self,
        *,
        status: int,
        response_model: str,
        input_tokens: int,
        output_tokens: int,
        usage_estimated: bool,
        error_type: str = "",
        ttfb_s: float | None = None,
        output: Any = None,
    ) -> None:
        """End the span; ``output`` (the completion, for tenants who opted in) is recorded as JSON text."""
        span_ = self.span
        attributes = span_.attributes
        if output is not None:
            attributes["gen_ai.output.messages"] = _content_json(output)
        attributes["gen_ai.response.model"] = response_model
        attributes["gen_ai.usage.input_tokens"] = input_tokens
        attributes["gen_ai.usage.output_tokens"] = output_tokens
        attributes["llmp.usage.estimated"] = usage_estimated
        attributes["http.response.status_code"] = status
        if ttfb_s is not None:
            attributes["llmp.time_to_first_chunk_s"] = round(ttfb_s, 6)
        if error_type:
            attributes["error.type"] = error_type
        if status >= 400 or error_type:
            span_.fail(error_type or str(status))
        span_.end()


_REQUEST_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)


def model_call_start(
    *,
    operation: str,
    system: str,
    request_model: str,
    upstream_model: str,
    payload: Mapping[str, Any],
    stream: bool,
    server_address: str = "",
    routing: Mapping[str, Any] | None = None,
    content: Any = None,
) -> ModelCall | None:
    """Start the GenAI span (``{operation} {model}``) and make it current; ``None`` when tracing is off.

    Parameters go on the span, message text only as ``content`` (the prompt), which the caller
    passes only for tenants who opted in (``Tenant.trace_content``).
    """
    if not _enabled:
        return None
    current = _current_span()
    if type(current) is LeanSpan:
        trace_id, parent_id, state = current.trace_id, current.span_id, current.state
    else:
        parent = trace.INVALID_SPAN_CONTEXT if current is None else current.get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            return None  # the model call is always inside a server span; unsampled, nothing is recorded
        trace_id, parent_id, state = parent.trace_id, parent.span_id, parent.trace_state
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": system,
        "gen_ai.provider.name": system,
        "gen_ai.request.model": request_model,
        "llmp.upstream.model": upstream_model,
        "llmp.stream": stream,
    }
    if server_address:
        attributes["server.address"] = server_address
    for param, attribute in _REQUEST_PARAMS:
        value = payload.get(param)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[attribute] = value
    stop = payload.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    if routing:
        attributes.update(routing_attributes(routing))
    if content is not None:
        attributes["gen_ai.input.messages"] = _content_json(content)
    name = f"{operation} {request_model}"
    return ModelCall(LeanSpan(name, 2, attributes, trace_id, parent_id, False, state))


def _content_json(value: Any) -> str:
    """Message text as one JSON string attribute, cut at a size collectors accept."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= CONTENT_LIMIT else text[:CONTENT_LIMIT] + "…"


def routing_attributes(decision: Mapping[str, Any]) -> dict[str, Any]:
    """``llmp.route.*`` attributes from a routing decision (strategy, candidates, chosen, served, fallbacks)."""
    out: dict[str, Any] = {}
    for name, value in decision.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            out[f"llmp.route.{name}"] = value
        elif isinstance(value, Iterable) and not isinstance(value, Mapping):
            items = [str(item) for item in value]
            out[f"llmp.route.{name}"] = items[:32]
    return out


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or ``""`` when there is no sampled trace."""
    if not _enabled:
        return ""
    ctx = _current()
    return format(ctx.trace_id, "032x") if ctx.is_valid and ctx.trace_flags.sampled else ""
