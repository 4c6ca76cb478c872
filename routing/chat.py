"""The model-call flow (chat, completions, embeddings): authenticate, validate, route, relay, account."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from audit.models import AuditEvent
from audit.services import AuditEntry, audit_denial_record
from core.errors import InvalidRequest, PlatformError
from observability import logs, metrics, telemetry
from routing import genai_spans, upstream
from routing.pricing import usage_cost
from routing.router import RouteRun
from routing.selectors import DeploymentTarget
from routing.smart import SmartDecision, smart_route
from routing.usage import UsageRow, usage_journaled, usage_record, usage_record_durable
from tenants.auth import KeyContext, key_authenticate_request
from tenants.quota import QuotaExceeded, Reservation, quota_reserve, quota_settle
from tenants.request_input import json_body_parse

logger = logging.getLogger(__name__)

SendStart = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
SendBody = Callable[[bytes, bool], Awaitable[None]]

# Longer names exist nowhere: deployments' public names are at most this long.
MAX_MODEL_NAME = 200
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ROLES_TEXT = ", ".join(sorted(MESSAGE_ROLES))
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]


def request_id_new() -> str:
    return "req_" + secrets.token_hex(12)


# No API key holds a control character; the audit trail (PostgreSQL text) cannot hold NUL.
@dataclass(slots=True)
class ChatRequest:
    payload: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _check_number(payload: dict[str, Any], name: str, *, low: float, high: float, integer: bool = False) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _type_error(name, "an integer" if integer else "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid value for '{name}': {value} is outside [{low:g}, {high:g}].", param=name, code="invalid_value"
        )


def chat_request_parse(body: bytes) -> ChatRequest:
    """Validate a chat completions body the way OpenAI does, with the offending param named."""
    payload, model = _object_with_model(body)
    messages = payload.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is a required property.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages", code="invalid_value")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{index}]", "an object", message)
        role = message.get("role")
        # A list or an object is unhashable: it must not reach the set lookup below.
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{index}].role': {role!r}; expected one of {ROLES_TEXT}.",
                param=f"messages[{index}].role",
                code="invalid_value",
            )
    stream, include_usage = _stream_options(payload)
    _check_number(payload, "temperature", low=0, high=2)
    _check_number(payload, "top_p", low=0, high=1)
    _check_number(payload, "n", low=1, high=128, integer=True)
    _check_number(payload, "max_tokens", low=1, high=10_000_000, integer=True)
    _check_number(payload, "max_completion_tokens", low=1, high=10_000_000, integer=True)
    return ChatRequest(payload, model, stream, include_usage)


def completion_request_parse(body: bytes) -> ChatRequest:
    """Validate a legacy ``/v1/completions`` body (a ``prompt`` instead of ``messages``)."""
    payload, model = _object_with_model(body)
    prompt = payload.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is a required property.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, str) and not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt", code="invalid_value")
    if not isinstance(prompt, str | list) or not (
        all(isinstance(item, str) for item in prompt) or _token_list(prompt) or all(map(_token_list, prompt))
    ):
        raise _type_error("prompt", "a string, an array of strings or an array of token arrays", prompt)
    stream, include_usage = _stream_options(payload)
    _check_number(payload, "temperature", low=0, high=2)
    _check_number(payload, "top_p", low=0, high=1)
    _check_number(payload, "n", low=1, high=128, integer=True)
    _check_number(payload, "best_of", low=1, high=20, integer=True)
    _check_number(payload, "max_tokens", low=0, high=10_000_000, integer=True)
    if (payload.get("best_of") or 1) < (payload.get("n") or 1):
        raise InvalidRequest("'best_of' must be at least 'n'.", param="best_of", code="invalid_value")
    return ChatRequest(payload, model, stream, include_usage)


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def embedding_request_parse(body: bytes) -> ChatRequest:
    """Validate an ``/v1/embeddings`` body: ``input`` is text, texts, tokens or token arrays."""
    payload, model = _object_with_model(body)
    data = payload.get("input")
    if data is None:
        raise InvalidRequest("'input' is a required property.", param="input", code="missing_required_parameter")
    if isinstance(data, str):
        if not data:
            raise InvalidRequest("'input' must not be an empty string.", param="input", code="invalid_value")
    elif isinstance(data, list):
        if not data:
            raise InvalidRequest("'input' must not be an empty array.", param="input", code="invalid_value")
        if not (all(isinstance(item, str) for item in data) or _token_list(data) or all(map(_token_list, data))):
            raise _type_error("input", "a string, an array of strings or an array of token arrays", data)
    else:
        raise _type_error("input", "a string or an array", data)
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid value for 'encoding_format': {encoding!r}; expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    _check_number(payload, "dimensions", low=1, high=100_000, integer=True)
    if payload.get("stream"):
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream", code="invalid_value")
    return ChatRequest(payload, model, False, False)


def _object_with_model(body: bytes) -> tuple[dict[str, Any], str]:
    payload = json_body_parse(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    # The requested name is stored (usage records, audit targets): PostgreSQL text cannot hold NUL.
    if len(model) > MAX_MODEL_NAME or "\x00" in model:
        raise InvalidRequest(
            f"Invalid value for 'model': a model name is at most {MAX_MODEL_NAME} characters, without NUL.",
            param="model",
            code="invalid_value",
        )
    return payload, model


def _stream_options(payload: dict[str, Any]) -> tuple[bool, bool]:
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _type_error("stream_options.include_usage", "a boolean", include_usage)
    return stream, include_usage


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI endpoint the gateway serves: its name in usage records, key scope, upstream path."""

    name: str
    scope: str
    path: str
    parse: Callable[[bytes], ChatRequest]


CHAT = Endpoint("chat.completions", "chat", upstream.CHAT_PATH, chat_request_parse)
# Legacy text completions generate text as chat does, so the "chat" scope covers them.
COMPLETIONS = Endpoint("completions", "chat", upstream.COMPLETIONS_PATH, completion_request_parse)
EMBEDDINGS = Endpoint("embeddings", "embeddings", upstream.EMBEDDINGS_PATH, embedding_request_parse)


def reservation_estimate(endpoint: Endpoint, payload: dict[str, Any], body_size: int) -> tuple[int, int]:
    """Input and output tokens to reserve before the call: never less than the request can use.

    Output is the per-completion limit times the completions generated: ``n`` for chat,
    ``max(n, best_of)`` for each prompt of a completion (an array of prompts is answered
    prompt by prompt). Embeddings generate no output. Input is ~4 bytes of body a token,
    except token arrays, which count exactly (``[1,2]`` is two tokens in five bytes).
    """
    tokens_in = max(1, body_size // 4)
    if endpoint is EMBEDDINGS:
        return max(tokens_in, _token_count(payload.get("input"))), 0
    if endpoint is COMPLETIONS:
        prompt = payload.get("prompt")
        tokens_in = max(tokens_in, _token_count(prompt))
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not _token_list(prompt) else 1
        per_completion = payload.get("max_tokens")
        completions = prompts * max(payload.get("n") or 1, payload.get("best_of") or 1)
    else:
        per_completion = payload.get("max_completion_tokens")
        if per_completion is None:
            per_completion = payload.get("max_tokens")
        completions = payload.get("n") or 1
    if per_completion is None:
        per_completion = settings.QUOTA_DEFAULT_OUTPUT_TOKENS
    return tokens_in, per_completion * completions


def _token_count(value: Any) -> int:
    """Tokens in a token array or an array of them; 0 for text (the body size estimates that)."""
    if _token_list(value):
        return len(value)
    if isinstance(value, list) and value and all(map(_token_list, value)):
        return sum(map(len, value))
    return 0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class ChatCompletion:
    """One ``POST /v1/chat/completions``, independent of the transport that carries it.

    Overhead, reported in ``x-gateway-overhead-ms`` and the usage record, is the time
    spent in the gateway: total time minus time spent waiting on the upstream. For a
    stream the header carries the overhead up to the response headers; the record has
    the whole stream's.
    """

    def __init__(
        self,
        *,
        headers: list[tuple[bytes, bytes]],
        client_ip: str | None,
        send_start: SendStart,
        send_body: SendBody,
        endpoint: Endpoint = CHAT,
        delivered: Callable[[], int] | None = None,
    ):
        self.started = time.perf_counter()
        self.created_at = dt.datetime.now(dt.UTC)
        self.request_id = request_id_new()
        # Raw, as received: a repeated header must stay visible (see tenants.request_input).
        self.raw_headers = headers
        self.headers = dict(headers)
        self.client_ip = client_ip
        self._send_start = send_start
        self._send_body = send_body
        # Body bytes the client has received so far, as the transport knows it.
        self._delivered = delivered
        self.key: KeyContext | None = None
        self.request: ChatRequest | None = None
        self.target: DeploymentTarget | None = None
        self.status = 0
        self.error_type = ""
        self.usage: upstream.Usage | None = None
        self.wait_s = 0.0
        self.ttfb_s: float | None = None
        self.disconnected = False
        self.reservation: Reservation | None = None
        self.smart: SmartDecision | None = None
        self.response_started = False
        self.response_complete = False
        self.endpoint = endpoint
        self.route: RouteRun | None = None
        self.ttft_s: float | None = None
        self.active = metrics.Active(endpoint.name)
        self.trace: telemetry.ServerSpan | None = None
        self.model_call: genai_spans.ModelCall | None = None
        self.upstream_called = False
        self.output: Any = None  # the completion, for the trace of a tenant that opted in

    def _base_headers(self) -> list[tuple[bytes, bytes]]:
        overhead = time.perf_counter() - self.started - self.wait_s
        return [
            (b"x-request-id", self.request_id.encode()),
            (b"x-gateway-overhead-ms", f"{overhead * 1000:.3f}".encode()),
            *(self.reservation.headers() if self.reservation is not None else ()),
        ]

    async def _respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.response_started = True
        await self._send_start(status, [*headers, *self._base_headers()])
        await self._record_durably(self.usage)
        self.response_complete = True
        await self._send_body(body, False)

    async def refuse(self, exc: PlatformError) -> None:
        """Answer with ``exc`` as an OpenAI-style error, with the usual gateway headers."""
        self.error_type = exc.code or exc.type
        extra = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
        await self._respond(exc.status, exc.body_bytes(), [*JSON_HEADERS, *extra, *self._route_headers(None)])

    async def run(self, body: bytes) -> None:
        self.trace = telemetry.server_span(f"/v1/{self.endpoint.path.lstrip('/')}", "POST", self.headers)
        self.active.__enter__()
        try:
            await self._serve(body)
        except PlatformError as exc:
            if self.response_started:
                self.error_type = exc.code or exc.type
                raise
            await self.refuse(exc)
        except asyncio.CancelledError:
            self.disconnected = not self.response_complete
            raise
        except Exception:
            logger.exception("chat completion %s failed", self.request_id)
            self.error_type = "internal_error"
            if self.response_started:
                raise
            await self._respond(
                500, PlatformError("The platform failed to handle this request.").body_bytes(), JSON_HEADERS
            )
        finally:
            self._account()
            self._observe()

    async def _serve(self, body: bytes) -> None:
        endpoint = self.endpoint
        with telemetry.span("key.authenticate"):
            self.key = await key_authenticate_request(self.raw_headers, ip=self.client_ip, endpoint=endpoint.name)
        self.key.require_scope(endpoint.scope)
        self.request = request = endpoint.parse(body)
        with telemetry.span("route.select", {"llmp.route.requested_model": request.model}):
            self.smart = await smart_route(
                model=request.model, payload=request.payload, tenant_id=self.key.tenant_id, request_id=self.request_id
            )
            self.route = route = RouteRun(key=self.key, stream=request.stream, tokens=max(1, len(body) // 4))
            self.target = await route.start(self.smart.model if self.smart else request.model)
        if self.key.quotas:
            with telemetry.span("quota.reserve"):
                await self._reserve(body, request, self.target)
        self.upstream_called = True
        self.model_call = genai_spans.model_call_start(
            operation=endpoint.name.split(".")[0],
            system=self.target.provider,
            request_model=request.model,
            upstream_model=self.target.upstream_model,
            payload=request.payload,
            stream=request.stream,
            routing=self._route_record(),
            content=upstream.prompt_of(request.payload) if self.key.trace_content else None,
        )
        trace_content = self.model_call is not None and self.key.trace_content
        if not request.stream:
            completion = await route.execute(self._complete)
            self.target = route.served
            self.wait_s += completion.wait_s + route.wait_s
            generated = 0 if endpoint is EMBEDDINGS else len(completion.body) // 4
            self.usage = completion.usage or upstream.usage_estimate(request.payload, generated)
            if trace_content and endpoint is not EMBEDDINGS:
                self.output = upstream.completion_output(completion.body)
            cost = self._cost(self.usage)
            await self._respond(200, completion.body, [*JSON_HEADERS, *self._route_headers(cost)])
            return
        relay, events, first = await route.execute(self._stream_open)
        self.target = route.served
        if trace_content:
            relay.collected = []
            if first is not None:
                relay._collect(first[6:])  # read before collection was asked for: "data: {...}\n\n"
        try:
            self.wait_s += relay.wait_s + route.wait_s
            relay.wait_s = 0.0
            self.status = 200
            self.response_started = True
            self.active.stream_started()
            await self._send_start(200, [*SSE_HEADERS, *self._route_headers(None), *self._base_headers()])
            if first is not None:
                await self._send_body(first, True)
                self.ttfb_s = time.perf_counter() - self.started
                with telemetry.span("stream.relay"):
                    async for event in events:
                        await self._send_body(event, True)
            if relay.error is not None:
                self.status = relay.error.status
                self.error_type = relay.error.code or relay.error.type
            if usage_journaled():
                self.usage = relay.usage or upstream.usage_estimate(request.payload, relay.content_events)
                await self._record_durably(self.usage)
            self.response_complete = True
            await self._send_body(b"data: [DONE]\n\n", False)
        finally:
            self.wait_s += relay.wait_s
            if self.response_started:
                self.usage = relay.usage or upstream.usage_estimate(request.payload, relay.content_events)
            if relay.collected is not None:
                text = "".join(relay.collected)
                self.output = [{"role": "assistant", "content": text} if endpoint is CHAT else text]
            await relay.close()

    async def _complete(self, target: DeploymentTarget) -> upstream.Completion:
        assert self.request is not None
        return await upstream.complete(target, self.request.payload, self.endpoint.path)

    async def _stream_open(
        self, target: DeploymentTarget
    ) -> tuple[upstream.StreamRelay, AsyncIterator[bytes], bytes | None]:
        """Open a stream and read its first event, so a failure before the first byte can fail over."""
        assert self.request is not None
        relay = upstream.StreamRelay(
            target, self.request.payload, client_wants_usage=self.request.include_usage, path=self.endpoint.path
        )
        try:
            await relay.open()
            events = relay.events().__aiter__()
            try:
                first: bytes | None = await events.__anext__()
            except StopAsyncIteration:
                first = None
            if relay.error is not None:
                raise relay.error
            self.ttft_s = time.perf_counter() - self.route_attempt_started()
        except BaseException:
            await relay.close()
            raise
        return relay, events, first

    def route_attempt_started(self) -> float:
        return self.route._attempt_started if self.route is not None else self.started

    def _cost(self, usage: upstream.Usage) -> Decimal | None:
        target = self.target
        if target is None:
            return None
        return usage_cost(target.litellm_model, usage.prompt_tokens, usage.completion_tokens, target.extra_params)

    def _route_headers(self, cost: Decimal | None) -> list[tuple[bytes, bytes]]:
        headers = self.route.headers() if self.route is not None else []
        if cost is not None:
            headers.append((b"x-request-cost", f"{cost:f}".encode()))
        if self.smart is not None:
            headers.extend(self.smart.headers)
        return headers

    async def _reserve(self, body: bytes, request: ChatRequest, target: DeploymentTarget) -> None:
        """Reserve against the key's and tenant's quotas before the upstream is called."""
        assert self.key is not None
        tokens_in, tokens_out = reservation_estimate(self.endpoint, request.payload, len(body))
        cost = usage_cost(target.litellm_model, tokens_in, tokens_out, target.extra_params)
        try:
            self.reservation = await quota_reserve(
                self.key.quotas, request.model, tokens_in=tokens_in, tokens_out=tokens_out, cost=cost
            )
        except QuotaExceeded as exc:
            metrics.quota_refusal_observe(self.key.tenant_slug, exc.code)
            # A key hammering its limit must not grow the trail per request: counted per interval.
            audit_denial_record(
                AuditEntry(
                    actor=f"key:{self.key.prefix}",
                    action="quota.refused",
                    target=f"model:{request.model}",
                    tenant_id=self.key.tenant_id,
                    outcome=AuditEvent.Outcome.DENIED,
                    ip=self.client_ip,
                    details={"limit": exc.code, "message": exc.message, "request_id": self.request_id},
                )
            )
            raise

    def _settle(self, usage: upstream.Usage) -> None:
        reservation, target = self.reservation, self.target
        if reservation is None or target is None:
            return
        cost = usage_cost(target.litellm_model, usage.prompt_tokens, usage.completion_tokens, target.extra_params)
        # Synchronous (it queues the adjustment), so a cancelled (disconnected) request settles too.
        quota_settle(reservation, tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens, cost=cost)

    async def _record_durably(self, usage: upstream.Usage | None) -> None:
        """Under USAGE_DURABILITY=journal, the usage row is on disk before the response's last bytes go out.

        The row is provisional (no routing decision yet); the final one is recorded by
        ``_account`` as always, and a restart writes this one only if the final one was lost.
        """
        if usage_journaled() and self.key is not None:
            await usage_record_durable(self._usage_row(usage or upstream.Usage(), time.perf_counter() - self.started))

    def _account(self) -> None:
        key, request, route = self.key, self.request, self.route
        if key is None:
            return
        usage = self.usage or upstream.Usage()
        self._settle(usage)
        total = time.perf_counter() - self.started
        decision = None
        if route is not None:
            route.release(
                latency_ms=None if request is None or request.stream else _ms(total - route.wait_s),
                ttft_ms=None if self.ttft_s is None else _ms(self.ttft_s),
                tokens=usage.completion_tokens,
            )
            decision = route.decision_record()
            if self.smart is not None:
                decision["ml"] = self.smart.record
        usage_record(self._usage_row(usage, total, decision))

    def _usage_row(self, usage: upstream.Usage, total: float, decision: dict[str, Any] | None = None) -> UsageRow:
        key, request, target = self.key, self.request, self.target
        assert key is not None
        return UsageRow(
            request_id=self.request_id,
            created_at=self.created_at,
            tenant_id=key.tenant_id,
            api_key_id=key.key_id,
            key_prefix=key.prefix,
            endpoint=self.endpoint.name,
            model_requested=request.model if request else "",
            deployment_id=target.id if target else None,
            model_served=target.litellm_model if target else "",
            stream=bool(request and request.stream),
            status_code=self.status or 499,
            error_type=self.error_type or ("client_disconnected" if self.disconnected else ""),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_estimated=usage.estimated,
            latency_ms=_ms(total),
            ttfb_ms=None if self.ttfb_s is None else _ms(self.ttfb_s),
            overhead_ms=_ms(max(0.0, total - self.wait_s)),
            client_disconnected=self.disconnected,
            cut_after_bytes=self._cut_after_bytes(),
            cost_overrides=target.extra_params if target else None,
            route_decision=decision,
            prompt=upstream.prompt_of(request.payload) if request and decision else None,
        )

    def _cut_after_bytes(self) -> int | None:
        """What the client had received of an answer it did not receive whole; None when it got it all."""
        if not self.disconnected:
            return None
        return self._delivered() if self._delivered is not None else 0

    def _route_record(self) -> dict[str, Any]:
        """What routing decided, for the trace: requested and chosen model, deployment, smart router."""
        request, target, smart, route = self.request, self.target, self.smart, self.route
        record: dict[str, Any] = {
            "requested_model": request.model if request else "",
            "chosen_model": target.model_name if target else "",
            "deployment": target.litellm_model if target else "",
            "deployment_id": target.id if target else None,
            "strategy": route.record.get("strategy", "") if route is not None else "",
        }
        if smart is not None:
            record["smart_router"] = smart.router
        return record

    def _observe(self) -> None:
        """Metrics, the request log line and the end of this request's spans (after accounting)."""
        self.active.__exit__()
        key, request, target = self.key, self.request, self.target
        usage = self.usage or upstream.Usage()
        status = self.status or 499
        error = self.error_type or ("client_disconnected" if self.disconnected else "")
        total = time.perf_counter() - self.started
        overhead = max(0.0, total - self.wait_s)
        model = target.model_name if target else None
        cost = (
            float(usage_cost(target.litellm_model, usage.prompt_tokens, usage.completion_tokens, target.extra_params))
            if target is not None and usage.total_tokens
            else 0.0
        )
        metrics.request_observe(
            endpoint=self.endpoint.name,
            tenant=key.tenant_slug if key else None,
            model=model,
            status=status,
            stream=bool(request and request.stream),
            latency_s=total,
            overhead_s=overhead,
            ttfb_s=self.ttfb_s,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost,
        )
        if self.upstream_called and self.error_type and target is not None:
            metrics.upstream_error_observe(target.model_name, target.litellm_model, self.error_type)
        trace_id = self.trace.trace_id if self.trace is not None else ""
        if self.model_call is not None:
            self.model_call.end(
                status=status,
                response_model=target.upstream_model if target else "",
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                usage_estimated=usage.estimated,
                error_type=error,
                ttfb_s=self.ttfb_s,
                output=self.output,
            )
        if self.trace is not None:
            self.trace.set(**{"llmp.request_id": self.request_id, "llmp.tenant": key.tenant_slug if key else ""})
            self.trace.end(status)
        logs.request_log(
            request_id=self.request_id,
            endpoint=self.endpoint.name,
            tenant=key.tenant_slug if key else None,
            key_prefix=key.prefix if key else None,
            model=model or (request.model[:100] if request else None),
            status=status,
            overhead_ms=_ms(overhead),
            latency_ms=_ms(total),
            stream=bool(request and request.stream),
            error=error,
            trace_id=trace_id,
        )
