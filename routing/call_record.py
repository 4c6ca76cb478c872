"""What a finished model call leaves behind: its usage row, metrics, the end of its spans, its log line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from observability import logs, metrics
from routing.parsing import prompt_of
from routing.upstream import Usage
from routing.usage import UsageRow

if TYPE_CHECKING:
    from routing.model_call import ModelCall


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def usage_row(call: ModelCall, usage: Usage, total: float, decision: dict[str, Any] | None = None) -> UsageRow:
    """The call's usage record; ``decision`` (the routing decision) only in the final one, not a provisional one."""
    key, request, target = call.key, call.request, call.target
    assert key is not None
    return UsageRow(
        request_id=call.request_id,
        created_at=call.created_at,
        tenant_id=key.tenant_id,
        api_key_id=key.key_id,
        key_prefix=key.prefix,
        endpoint=call.endpoint.name,
        model_requested=request.model if request else "",
        deployment_id=target.id if target else None,
        model_served=target.litellm_model if target else "",
        stream=bool(request and request.stream),
        status_code=call.final_status,
        error_type=call.final_error,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        usage_estimated=usage.estimated,
        latency_ms=ms(total),
        ttfb_ms=None if call.ttfb_s is None else ms(call.ttfb_s),
        overhead_ms=ms(max(0.0, total - call.wait_s)),
        client_disconnected=call.disconnected,
        cut_after_bytes=_cut_after_bytes(call),
        cost_overrides=target.extra_params if target else None,
        route_decision=decision,
        prompt=prompt_of(request.payload) if request and decision else None,
    )


def _cut_after_bytes(call: ModelCall) -> int | None:
    """What the client had received of an answer it did not receive whole; None when it got it all."""
    if not call.disconnected:
        return None
    return call.delivered() if call.delivered is not None else 0


def call_observe(call: ModelCall) -> None:
    """Metrics, the request log line and the end of the call's spans (after accounting)."""
    call.active.__exit__()
    key, request, target = call.key, call.request, call.target
    usage = call.usage or Usage()
    status, error = call.final_status, call.final_error
    total = time.perf_counter() - call.started
    overhead = max(0.0, total - call.wait_s)
    model = target.model_name if target else None
    cost = float(call.cost(usage.prompt_tokens, usage.completion_tokens) or 0) if usage.total_tokens else 0.0
    metrics.request_observe(
        endpoint=call.endpoint.name,
        tenant=key.tenant_slug if key else None,
        model=model,
        status=status,
        stream=bool(request and request.stream),
        latency_s=total,
        overhead_s=overhead,
        ttfb_s=call.ttfb_s,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=cost,
    )
    if call.upstream_called and call.error_type and target is not None:
        metrics.upstream_error_observe(target.model_name, target.litellm_model, call.error_type)
    trace_id = call.trace.trace_id if call.trace is not None else ""
    if call.call_span is not None:
        call.call_span.end(
            status=status,
            response_model=target.upstream_model if target else "",
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            usage_estimated=usage.estimated,
            error_type=error,
            ttfb_s=call.ttfb_s,
            output=call.output,
        )
    if call.trace is not None:
        call.trace.set(**{"llmp.request_id": call.request_id, "llmp.tenant": key.tenant_slug if key else ""})
        call.trace.end(status)
    logs.request_log(
        request_id=call.request_id,
        endpoint=call.endpoint.name,
        tenant=key.tenant_slug if key else None,
        key_prefix=key.prefix if key else None,
        model=model or (request.model[:100] if request else None),
        status=status,
        overhead_ms=ms(overhead),
        latency_ms=ms(total),
        stream=bool(request and request.stream),
        error=error,
        trace_id=trace_id,
    )
