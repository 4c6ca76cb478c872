"""The span of one model call, after OpenTelemetry's GenAI semantic conventions (``gen_ai.*``, ``llmp.route.*``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from observability import telemetry

CONTENT_LIMIT = 16_384  # characters of prompt or completion kept on a span

_REQUEST_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)


class ModelCall:
    """The GenAI client span of one model call: started before the upstream call, ended at accounting."""

    __slots__ = ("span",)

    def __init__(self, span_: telemetry.Span) -> None:
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
        attributes: dict[str, Any] = {}
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
        span_ = self.span
        span_.set_attributes(attributes)
        if status >= 400 or error_type:
            span_.fail(error_type or str(status))
        span_.end()


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
    passes only for tenants who opted in (``Tenant.trace_content``). The model call is always
    inside a server span: in an unsampled trace nothing is recorded.
    """
    if not telemetry.current_trace_id():
        return None  # off, or an unsampled trace: nothing to build attributes for
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
    span_ = telemetry.child_span(f"{operation} {request_model}", attributes, kind=SpanKind.CLIENT)
    return None if span_ is None else ModelCall(span_)


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
