"""OpenTelemetry tracing: set up from the standard ``OTEL_*`` variables, off unless an exporter is named.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and
``OTEL_SDK_DISABLED`` is not true. Sampling, the service name, resource attributes and the
OTLP endpoint, headers and timeouts are read by the SDK itself from the usual variables.

With ``OTEL_FAST_PATH`` (the default) our spans are lean (``lean_spans``) and OTLP is encoded
and posted by a child process (``span_export``); without it they are SDK spans exported by
the SDK's batch processor and OTLP exporter (``sdk_spans``). When tracing is off, ``span``
returns one shared no-op context manager and the other helpers return ``None`` or nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from core.registry import Singleton
from observability.lean_spans import LeanSpans
from observability.sdk_spans import SdkSpans
from observability.span_api import TRACER_NAME, ServerSpan, Span, SpanBackend, SpanScope
from observability.span_export import ChildSink
from observability.span_records import ProviderSink, SpanProcessorToSink

__all__ = [
    "TRACER_NAME",
    "ServerSpan",
    "Span",
    "child_span",
    "current_trace_id",
    "enabled",
    "inject",
    "server_span",
    "setup",
    "shutdown",
    "span",
    "teardown",
    "wanted",
]

logger = logging.getLogger(__name__)

_NOOP = contextlib.nullcontext(None)


@dataclass(frozen=True)
class Tracing:
    """What ``setup`` chose: the SDK provider, how our spans are made, and (fast path) where their records go."""

    provider: Any
    spans: SpanBackend
    sink: ChildSink | ProviderSink | None = None

    def flush(self, timeout_s: float = 5.0) -> None:
        """Hand on what is buffered (to the export child, or the provider's exporters); tracing stays on."""
        if self.sink is not None:
            self.sink.flush(timeout_s)
        if not isinstance(self.sink, ProviderSink):
            self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered and wait for the export (the export child exits)."""
        if self.sink is not None:
            self.sink.shutdown(timeout_s)
        if not isinstance(self.sink, ProviderSink):
            self.provider.force_flush(int(timeout_s * 1000))


def _unmade() -> Tracing:
    raise RuntimeError("tracing is turned on by telemetry.setup(), not on first use")


def _forget(tracing: Tracing) -> None:
    """Between tests: the instrumentation removed, an export child stopped, as in a fresh process."""
    _uninstrument()
    if isinstance(tracing.sink, ChildSink):
        tracing.sink.shutdown(1.0)


# Set by ``setup``; read with ``peek`` on every span (None: tracing is off).
tracing = Singleton("observability.tracing", _unmade, flush=Tracing.flush, close=_forget, order=100)


def enabled() -> bool:
    return tracing.peek() is not None


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


def fast_path() -> bool:
    """``OTEL_FAST_PATH``: lean spans and the export child (default), or the SDK's spans and exporter."""
    from django.conf import settings

    return bool(getattr(settings, "OTEL_FAST_PATH", True))


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


def _provider_from_environment(service: str, fast: bool) -> tuple[Any, ChildSink | None]:
    """A provider exporting as ``OTEL_TRACES_EXPORTER`` says; on the fast path, OTLP alone goes to the export child."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    names = _exporter_names()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    if fast and names == ["otlp"]:
        sink = ChildSink(service)
        # The official instrumentations' spans take the same way out.
        provider.add_span_processor(SpanProcessorToSink(sink))  # type: ignore[arg-type]
        return provider, sink
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider, None


def setup(*, service: str = "llm-platform", provider: Any = None, instrument: bool = True) -> bool:
    """Turn tracing on when the environment asks for it (or when ``provider`` is given, in tests).

    Idempotent. Returns whether tracing is on. ``service`` is the default for
    ``service.name``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win.
    """
    if enabled():
        return True
    fast = fast_path()
    sink: ChildSink | ProviderSink | None = None
    if provider is None:
        if not wanted():
            return False
        provider, sink = _provider_from_environment(service, fast)
        trace.set_tracer_provider(provider)
        atexit.register(shutdown)
    spans: SpanBackend
    if fast:
        if sink is None:
            sink = ProviderSink(provider)
        spans = LeanSpans(sink.put, provider.sampler)
    else:
        spans = SdkSpans(provider.get_tracer(TRACER_NAME))
    tracing.replace(Tracing(provider, spans, sink))
    if instrument:
        _instrument(provider)
    logger.info("tracing on (service %s, %s)", service, "fast path" if fast else "SDK spans and exporter")
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


def _uninstrument() -> None:
    for instrumentor in _instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def teardown() -> None:
    """Switch tracing off again and remove the instrumentation (for tests)."""
    _uninstrument()
    tracing.replace(None)


def shutdown(timeout_s: float = 5.0) -> None:
    """Export buffered spans and wait for the export (at drain / exit)."""
    current = tracing.peek()
    if current is not None:
        current.shutdown(timeout_s)


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, as a context manager; a shared no-op when tracing is off."""
    current = tracing.peek()
    if current is None:
        return _NOOP
    return SpanScope(current.spans, name, attributes, kind)


def child_span(name: str, attributes: Mapping[str, Any], *, kind: SpanKind = SpanKind.INTERNAL) -> Span | None:
    """A span under the current sampled span, current until its ``end``; ``None`` without one (or tracing off).

    For a span that outlives a block (a model call, started before the upstream call and
    ended at accounting); unlike ``span``, it never starts a trace of its own.
    """
    current = tracing.peek()
    if current is None:
        return None
    return current.spans.start(name, attributes, kind, False)


def server_span(route: str, method: str, headers: Mapping[bytes, bytes]) -> ServerSpan | None:
    current = tracing.peek()
    if current is None:
        return None
    attributes = {"http.request.method": method, "http.route": route, "url.path": route}
    return ServerSpan(*current.spans.server(f"{method} {route}", attributes, headers))


def inject(headers: dict[str, str]) -> None:
    """Put the current trace context on an outgoing request's headers (``traceparent``, ``tracestate``)."""
    current = tracing.peek()
    if current is not None:
        current.spans.inject(headers)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or ``""`` when there is no sampled trace."""
    current = tracing.peek()
    return "" if current is None else current.spans.current_trace_id()
