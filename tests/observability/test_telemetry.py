"""Spans of one chat completion, caught with an in-memory exporter: names, nesting, GenAI attributes, no prompt."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from audit.services import deferred_audit
from observability import telemetry
from routing import upstream
from routing.model_call import ModelCall
from routing.usage import usage_writer
from tenants.services import tenant_save

PROMPT = "the launch codes are hunter2"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


async def _complete(
    secret: str, *, stream: bool, directive: str = "[[fake chunks=4]]"
) -> tuple[int, bytes, dict[bytes, bytes]]:
    sent: dict[str, object] = {"body": b""}

    async def start(status: int, headers: list[tuple[bytes, bytes]]) -> None:
        sent["status"], sent["headers"] = status, dict(headers)

    async def body(chunk: bytes, more: bool) -> None:
        sent["body"] = sent["body"] + chunk  # type: ignore[operator]

    headers = [
        (b"authorization", f"Bearer {secret}".encode()),
        (b"traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01".encode()),
    ]
    payload = {
        "model": "gpt-4o-mini",
        "stream": stream,
        "temperature": 0.5,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": f"{PROMPT} {directive}"}],
    }
    completion = ModelCall(headers=headers, client_ip="127.0.0.1", send_start=start, send_body=body)
    await completion.run(json.dumps(payload).encode())
    await upstream._session().close()  # this loop ends with the call
    for writer in (usage_writer, deferred_audit):
        # Write now, and forget the flush timer scheduled on this short-lived loop.
        await writer.flush()
        writer.discard()
    return sent["status"], sent["body"], sent["headers"]  # type: ignore[return-value]


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _no_prompt(exporter: InMemorySpanExporter) -> None:
    for span in exporter.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert PROMPT not in str(value), f"prompt text leaked into span {span.name}"
        for event in span.events:
            assert PROMPT not in str(event.attributes), f"prompt text leaked into an event of {span.name}"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_chat_completion_is_one_trace_continuing_the_callers(
    spans, owner_key, deployment_factory, stream, monkeypatch
):
    deployment_factory()
    sent_traceparents: list[str] = []
    headers_of = upstream._headers

    def provider_headers(target):
        headers = headers_of(target)
        sent_traceparents.append(headers.get("traceparent", ""))
        return headers

    monkeypatch.setattr(upstream, "_headers", provider_headers)
    status, body, _ = asyncio.run(_complete(owner_key.secret, stream=stream))
    assert status == 200, body
    named = _by_name(spans)
    server = named["POST /v1/chat/completions"]
    model_call = named["chat gpt-4o-mini"]
    # The caller's traceparent is honoured: same trace, its span is our parent.
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    assert server.kind is SpanKind.SERVER
    for name in ("key.authenticate", "route.select", "chat gpt-4o-mini"):
        assert named[name].parent is not None and named[name].parent.span_id == server.context.span_id, name
    # The HTTP call to the provider continues the trace as a child of the model call.
    assert sent_traceparents == [f"00-{TRACE_ID}-{model_call.context.span_id:016x}-01"]
    attributes = model_call.attributes or {}
    assert model_call.kind is SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["llmp.route.chosen_model"] == "gpt-4o-mini"
    assert attributes["llmp.route.deployment"] == "openai/gpt-4o-mini"
    assert attributes["llmp.route.strategy"] == "simple-shuffle"  # the default for a model with no route group
    if stream:
        relay = named["stream.relay"]
        assert relay.parent is not None and relay.parent.span_id == model_call.context.span_id
    assert (server.attributes or {})["http.response.status_code"] == 200
    _no_prompt(spans)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_provider_called_through_litellm_receives_the_trace_context(spans, owner_key, deployment_factory, stream):
    # Not the byte relay: litellm makes the provider request, with the deployment's own extra headers.
    deployment_factory(extra_params={"passthrough": False, "extra_headers": {"X-Team": "search"}})
    status, body, _ = asyncio.run(
        _complete(owner_key.secret, stream=stream, directive="[[fake echo_header=traceparent chunks=1]]")
    )
    assert status == 200, body
    model_call = _by_name(spans)["chat gpt-4o-mini"]
    # The fake provider answers with the traceparent it received: the model-call span is the parent.
    assert f"00-{TRACE_ID}-{model_call.context.span_id:016x}-01" in body.decode()
    _no_prompt(spans)


def test_a_litellm_call_keeps_the_deployments_extra_headers(spans, owner_key, deployment_factory):
    deployment_factory(extra_params={"passthrough": False, "extra_headers": {"X-Team": "search"}})
    status, body, _ = asyncio.run(
        _complete(owner_key.secret, stream=False, directive="[[fake echo_header=x-team chunks=1]]")
    )
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "search"


def test_a_refused_key_ends_its_server_span_with_the_status(spans, transactional_db):
    status, _, _ = asyncio.run(_complete("sk-not-a-key", stream=False))
    assert status == 401
    named = _by_name(spans)
    assert (named["POST /v1/chat/completions"].attributes or {})["http.response.status_code"] == 401
    assert "chat gpt-4o-mini" not in named


def test_tracing_is_off_without_an_exporter(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.wanted()
    assert not telemetry.enabled()
    assert telemetry.span("x") is telemetry.span("y"), "off, a span is one shared no-op"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert telemetry.wanted()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not telemetry.wanted()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_prompt_and_completion_text_reach_spans_only_for_a_tenant_that_opted_in(
    spans, owner, outsider, key_factory, deployment_factory, stream
):
    deployment_factory()
    owner.trace_content = True
    tenant_save(tenant=owner, actor="test")
    opted_in, other = key_factory(owner), key_factory(outsider)

    status, _, _ = asyncio.run(_complete(other.secret, stream=stream))
    assert status == 200
    _no_prompt(spans)
    attributes = _by_name(spans)["chat gpt-4o-mini"].attributes or {}
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes

    spans.clear()
    status, body, _ = asyncio.run(_complete(opted_in.secret, stream=stream))
    assert status == 200
    attributes = _by_name(spans)["chat gpt-4o-mini"].attributes or {}
    prompt = json.loads(str(attributes["gen_ai.input.messages"]))
    assert prompt[0]["role"] == "user" and prompt[0]["content"].startswith(PROMPT)
    output = json.loads(str(attributes["gen_ai.output.messages"]))
    assert output[0]["role"] == "assistant" and output[0]["content"]
    if not stream:
        assert output[0]["content"] == json.loads(body)["choices"][0]["message"]["content"]
    else:  # the whole streamed text, first chunk included
        assert output[0]["content"] == "".join(
            delta
            for line in body.decode().splitlines()
            if line.startswith("data: {")
            for choice in json.loads(line[6:]).get("choices") or ()
            if (delta := choice["delta"].get("content"))
        )
    assert all(
        PROMPT not in str(value) for value in (_by_name(spans)["POST /v1/chat/completions"].attributes or {}).values()
    )
