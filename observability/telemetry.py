"""OpenTelemetry tracing: set up from the standard ``OTEL_*`` variables, off unless an exporter is named.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and
``OTEL_SDK_DISABLED`` is not true. Sampling, the service name, resource attributes and the
OTLP endpoint, headers and timeouts are read by the SDK itself from the usual variables.

When tracing is off, ``span`` returns one shared no-op context manager and the model-call
helpers return ``None``: a dictionary lookup and a call, no allocation of spans.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)

_enabled = False
_tracer: trace.Tracer = trace.NoOpTracer()
_NOOP = contextlib.nullcontext(None)

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


def _exporters() -> list[Any]:
    names = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported here; use otlp, console or none "
                "(OTLP over HTTP/protobuf; point OTEL_EXPORTER_OTLP_ENDPOINT at a collector)."
            )
    return exporters


def setup(*, service: str = "llm-platform", provider: Any = None, instrument: bool = True) -> bool:
    """Turn tracing on when the environment asks for it (or when ``provider`` is given, in tests).

    Idempotent. Returns whether tracing is on. ``service`` is the default for
    ``service.name``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win.
    """
    global _enabled, _tracer
    if _enabled:
        return True
    if provider is None:
        if not wanted():
            return False
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
        provider = TracerProvider(resource=Resource.create(attributes))
        for exporter in _exporters():
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer(TRACER_NAME)
    _enabled = True
    if instrument:
        _instrument(provider)
    logger.info("tracing on (service %s)", service)
    return True


def _instrument(provider: Any) -> None:
    """The official instrumentations: Django views, Redis, psycopg, Celery and the aiohttp client."""
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (
        DjangoInstrumentor(),
        RedisInstrumentor(),
        PsycopgInstrumentor(),
        CeleryInstrumentor(),
        AioHttpClientInstrumentor(),
    ):
        if not instrumentor.is_instrumented_by_opentelemetry:
            try:
                instrumentor.instrument(tracer_provider=provider)
            except Exception:  # a missing optional peer must not stop the server
                logger.exception("could not instrument %s", type(instrumentor).__name__)


def teardown() -> None:
    """Switch tracing off again and remove the instrumentation (for tests)."""
    global _enabled, _tracer
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (
        DjangoInstrumentor(),
        RedisInstrumentor(),
        PsycopgInstrumentor(),
        CeleryInstrumentor(),
        AioHttpClientInstrumentor(),
    ):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _enabled = False
    _tracer = trace.NoOpTracer()


def shutdown() -> None:
    """Flush buffered spans (at drain / exit)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if _enabled and force_flush is not None:
        force_flush(5000)


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, as a context manager; a shared no-op when tracing is off."""
    if not _enabled:
        return _NOOP
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


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
    """

    __slots__ = ("span", "token")

    def __init__(self, span_: Span, token: object) -> None:
        self.span = span_
        self.token = token

    def set(self, **attributes: Any) -> None:
        self.span.set_attributes(attributes)

    def end(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        try:
            otel_context.detach(self.token)  # type: ignore[arg-type]
        finally:
            self.span.end()


def server_span(route: str, method: str, headers: Mapping[bytes, bytes]) -> ServerSpan | None:
    if not _enabled:
        return None
    parent = propagate.extract(headers, getter=_getter)
    span_ = _tracer.start_span(
        f"{method} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route, "url.path": route},
    )
    token = otel_context.attach(trace.set_span_in_context(span_, parent))
    return ServerSpan(span_, token)


class ModelCall:
    """The GenAI client span of one model call: started before the upstream call, ended at accounting."""

    __slots__ = ("span", "token")

    def __init__(self, span_: Span, token: object) -> None:
        self.span = span_
        self.token = token

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
        if output is not None:
            span_.set_attribute("gen_ai.output.messages", _content_json(output))
        span_.set_attributes(
            {
                "gen_ai.response.model": response_model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "llmp.usage.estimated": usage_estimated,
                "http.response.status_code": status,
            }
        )
        if ttfb_s is not None:
            span_.set_attribute("llmp.time_to_first_chunk_s", round(ttfb_s, 6))
        if error_type:
            span_.set_attribute("error.type", error_type)
        if status >= 400 or error_type:
            span_.set_status(Status(StatusCode.ERROR, error_type or str(status)))
        try:
            otel_context.detach(self.token)  # type: ignore[arg-type]
        finally:
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
    span_ = _tracer.start_span(f"{operation} {request_model}", kind=SpanKind.CLIENT, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span_))
    return ModelCall(span_, token)


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
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


@contextlib.contextmanager
def attached(span_: Span | None) -> Iterator[None]:
    """Make ``span_`` current for the block (no-op for ``None``)."""
    if span_ is None:
        yield
        return
    with trace.use_span(span_, end_on_exit=False):
        yield
