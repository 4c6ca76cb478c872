"""What our spans look like to the code that opens them, whichever path (lean or SDK) records them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind

TRACER_NAME = "llm_platform"  # the instrumentation scope of our spans


class Span(Protocol):
    """One of our spans: current in the OpenTelemetry context from its start until ``end``."""

    @property
    def trace_id(self) -> int: ...

    @property
    def span_id(self) -> int: ...

    def set_attribute(self, key: str, value: Any) -> None: ...

    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...

    def fail(self, description: str = "") -> None: ...

    def end(self) -> None: ...


class Ending(Protocol):
    def end(self) -> None: ...


class SpanBackend(Protocol):
    """How spans are made, made current and handed on: ``LeanSpans`` (the fast path) or ``SdkSpans``."""

    def start(self, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind, root: bool) -> Span | None:
        """A span under the current sampled span; with ``root``, a new sampled root when none is current."""
        ...

    def server(
        self, name: str, attributes: dict[str, Any], headers: Mapping[bytes, bytes]
    ) -> tuple[Span | None, Ending | None]:
        """A server span continuing ``traceparent``; unsampled, no span but an ``Ending`` for its current context."""
        ...

    def inject(self, headers: dict[str, str]) -> None: ...

    def current_trace_id(self) -> str: ...


class HeaderGetter(Getter[Mapping[bytes, bytes]]):
    """Reads trace context from ASGI headers (bytes names and values)."""

    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [name.decode("latin-1") for name in carrier]


header_getter = HeaderGetter()


class SpanScope:
    """``span()`` while tracing is on: the span is current inside the block, ended (with errors noted) after it."""

    __slots__ = ("attributes", "backend", "kind", "name", "span")

    def __init__(self, backend: SpanBackend, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind) -> None:
        self.backend = backend
        self.name, self.attributes, self.kind = name, attributes, kind
        self.span: Span | None = None

    def __enter__(self) -> Span | None:
        self.span = self.backend.start(self.name, self.attributes, self.kind, True)
        return self.span

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        span_ = self.span
        if span_ is None:
            return
        if exc is not None and not isinstance(exc, GeneratorExit):
            span_.fail(f"{exc_type.__name__}: {exc}")
            span_.set_attribute("error.type", exc_type.__qualname__)
        span_.end()


class ServerSpan:
    """The server span of a request served outside Django's view stack (the Channels consumers).

    Continues the caller's trace from ``traceparent``/``tracestate`` in the ASGI headers,
    and is the current span until ``end``. Start and end must happen in the same task.
    An unsampled request records nothing, but its context is current, so the trace
    decision travels on with ``traceparent``.
    """

    __slots__ = ("span", "unsampled")

    def __init__(self, span_: Span | None, unsampled: Ending | None = None) -> None:
        self.span = span_
        self.unsampled = unsampled

    @property
    def trace_id(self) -> str:
        """This request's trace id as 32 hex digits, ``""`` when it is not sampled."""
        return "" if self.span is None else f"{self.span.trace_id:032x}"

    def set(self, **attributes: Any) -> None:
        if self.span is not None:
            self.span.set_attributes(attributes)

    def end(self, status: int) -> None:
        span_ = self.span
        if span_ is None:
            if self.unsampled is not None:
                self.unsampled.end()
            return
        span_.set_attribute("http.response.status_code", status)
        if status >= 500:
            span_.fail()
        span_.end()
