"""The model-call flow (chat, completions, embeddings): authenticate, validate, route, relay, account."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

from audit.models import AuditEvent
from audit.services import AuditEntry, audit_denial_record
from core.errors import PlatformError
from observability import metrics, telemetry
from routing import genai_spans, upstream
from routing.call_record import call_observe, ms, usage_row
from routing.parsing import CHAT, EMBEDDINGS, Endpoint, ModelRequest, prompt_of
from routing.pricing import usage_cost
from routing.router import RouteRun
from routing.selectors import DeploymentTarget
from routing.smart import SmartDecision, smart_route
from routing.tokens import reservation_estimate, text_tokens, usage_estimate
from routing.usage import usage_journaled, usage_record, usage_record_durable
from tenants.auth import KeyContext, key_authenticate_request
from tenants.quota import QuotaExceeded, Reservation, quota_reserve, quota_settle

logger = logging.getLogger(__name__)

SendStart = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
SendBody = Callable[[bytes, bool], Awaitable[None]]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]


def request_id_new() -> str:
    return "req_" + secrets.token_hex(12)


class ModelCall:
    """One ``POST`` to a model endpoint (chat, completions, embeddings), independent of the transport.

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
        self.delivered = delivered
        self.key: KeyContext | None = None
        self.request: ModelRequest | None = None
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
        self.call_span: genai_spans.ModelCall | None = None
        self.upstream_called = False
        self.output: Any = None  # the completion, for the trace of a tenant that opted in

    @property
    def final_status(self) -> int:
        """The status the client got; 499 (client closed request) when it left before one."""
        return self.status or 499

    @property
    def final_error(self) -> str:
        return self.error_type or ("client_disconnected" if self.disconnected else "")

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
            call_observe(self)

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
            self.route = route = RouteRun(key=self.key, stream=request.stream, tokens=text_tokens(len(body)))
            self.target = await route.start(self.smart.model if self.smart else request.model)
        if self.key.quotas:
            with telemetry.span("quota.reserve"):
                await self._reserve(body, request)
        self.upstream_called = True
        self.call_span = genai_spans.model_call_start(
            operation=endpoint.name.split(".")[0],
            system=self.target.provider,
            request_model=request.model,
            upstream_model=self.target.upstream_model,
            payload=request.payload,
            stream=request.stream,
            routing=self._route_record(),
            content=prompt_of(request.payload) if self.key.trace_content else None,
        )
        trace_content = self.call_span is not None and self.key.trace_content
        if not request.stream:
            completion = await route.execute(self._complete)
            self.target = route.served
            self.wait_s += completion.wait_s + route.wait_s
            generated = 0 if endpoint is EMBEDDINGS else text_tokens(len(completion.body))
            self.usage = completion.usage or usage_estimate(request.payload, generated)
            if trace_content and endpoint is not EMBEDDINGS:
                self.output = upstream.completion_output(completion.body)
            cost = self.cost(self.usage.prompt_tokens, self.usage.completion_tokens)
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
                self.usage = relay.usage or usage_estimate(request.payload, relay.content_events)
                await self._record_durably(self.usage)
            self.response_complete = True
            await self._send_body(b"data: [DONE]\n\n", False)
        finally:
            self.wait_s += relay.wait_s
            if self.response_started:
                self.usage = relay.usage or usage_estimate(request.payload, relay.content_events)
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

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
        """What the deployment serving this request charges for these tokens; None before one is chosen."""
        target = self.target
        if target is None:
            return None
        return usage_cost(target.litellm_model, prompt_tokens, completion_tokens, target.extra_params)

    def _route_headers(self, cost: Decimal | None) -> list[tuple[bytes, bytes]]:
        headers = self.route.headers() if self.route is not None else []
        if cost is not None:
            headers.append((b"x-request-cost", f"{cost:f}".encode()))
        if self.smart is not None:
            headers.extend(self.smart.headers)
        return headers

    async def _reserve(self, body: bytes, request: ModelRequest) -> None:
        """Reserve against the key's and tenant's quotas before the upstream (the chosen target) is called."""
        assert self.key is not None
        tokens_in, tokens_out = reservation_estimate(self.endpoint, request.payload, len(body))
        cost = self.cost(tokens_in, tokens_out) or Decimal(0)
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
        reservation, cost = self.reservation, self.cost(usage.prompt_tokens, usage.completion_tokens)
        if reservation is None or cost is None:
            return
        # Synchronous (it queues the adjustment), so a cancelled (disconnected) request settles too.
        quota_settle(reservation, tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens, cost=cost)

    async def _record_durably(self, usage: upstream.Usage | None) -> None:
        """Under USAGE_DURABILITY=journal, the usage row is on disk before the response's last bytes go out.

        The row is provisional (no routing decision yet); the final one is recorded by
        ``_account`` as always, and a restart writes this one only if the final one was lost.
        """
        if usage_journaled() and self.key is not None:
            await usage_record_durable(usage_row(self, usage or upstream.Usage(), time.perf_counter() - self.started))

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
                latency_ms=None if request is None or request.stream else ms(total - route.wait_s),
                ttft_ms=None if self.ttft_s is None else ms(self.ttft_s),
                tokens=usage.completion_tokens,
            )
            decision = route.decision_record()
            if self.smart is not None:
                decision["ml"] = self.smart.record
        usage_record(usage_row(self, usage, total, decision))

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
