"""A provider answering 200 with nonsense in its usage or its events costs the client nothing but accuracy."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from routing.models import ModelDeployment, RequestLog
from routing.services import deployment_save
from routing.usage import usage_writer
from tests.fuzz import Answer
from tests.live import free_port
from tests.routing.provider import chat_through

pytestmark = pytest.mark.django_db(transaction=True)

BAD_USAGES = [
    {"prompt_tokens": "many", "completion_tokens": 3},
    {"prompt_tokens": [1], "completion_tokens": {"a": 1}},
    {"prompt_tokens": 1.5, "completion_tokens": float("inf")},
    {"prompt_tokens": -4, "completion_tokens": 10**30},
]


def provider_app(usage: object) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if not payload.get("stream"):
            body = {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": usage,
            }
            return web.Response(text=json.dumps(body, allow_nan=True), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
        events = [json.dumps(chunk), '["usage", 1]', json.dumps({"choices": [], "usage": usage}, allow_nan=True)]
        await response.write("".join(f"data: {event}\n\n" for event in events).encode() + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def ask(port: int, usage: object, secret: str, stream: bool) -> Answer:
    return chat_through(provider_app(usage), port, secret=secret, model="odd", stream=stream, after=usage_writer.flush)


@pytest.mark.parametrize("usage", BAD_USAGES)
@pytest.mark.parametrize("stream", [False, True])
def test_usage_that_is_not_token_counts_is_estimated_instead(owner_key, usage, stream):
    port = free_port()
    deployment_save(
        deployment=ModelDeployment(
            model_name="odd", litellm_model="openai/odd", api_base=f"http://127.0.0.1:{port}/v1"
        ),
        actor="test",
    )
    answer = ask(port, usage, owner_key.secret, stream)
    assert answer.status == 200, answer.body
    log = RequestLog.objects.get(request_id=answer.headers[b"x-request-id"].decode())
    assert log.status_code == 200 and log.usage_estimated
    assert 0 < log.completion_tokens < 1000
    assert RequestLog.objects.filter(status_code=500).count() == 0
