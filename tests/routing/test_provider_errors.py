"""Provider errors reach the client with their explanation but without our credentials or internals."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web

from routing import provider_errors
from routing.models import ModelDeployment
from routing.provider_errors import provider_message_clean
from routing.selectors import DeploymentTarget
from routing.services import deployment_save
from tests.fuzz import Answer
from tests.live import free_port
from tests.routing.provider import chat_through

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDER_KEY = "sk-proj-Zq8mXv2LkT9rBn4YwP7sHc3JdF6gA1eU"
HELPFUL = "max_tokens is too large: 99999. This model supports at most 4096 completion tokens"


def leaky_message(port: int) -> str:
    """A provider error carrying one of every kind of secret next to the helpful part."""
    return (
        f"{HELPFUL}. Deployment internal-gpt-prod-eu7 at "
        f"http://127.0.0.1:{port}/v1/chat/completions?api_key=hunter2hunter2 "
        f"rejected key {PROVIDER_KEY} (Authorization: Bearer abc.def.ghi-123) for org-8fJ2kL0pQ9wE3rT5yU1i, "
        "AWS AKIAIOSFODNN7EXAMPLE, request id req_4b8e2f9a1c7d3e6b5a0f, trace 0f8fad5b-d9cb-469f-a165-70867728950e, "
        "signature 3f786850e387550fdab836ed7e6dc881de23001b and token dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEyMzQ1Njc4OTA="
    )


SECRETS = (
    "internal-gpt-prod-eu7",
    "127.0.0.1",
    "hunter2",
    PROVIDER_KEY,
    PROVIDER_KEY[8:20],
    "abc.def.ghi",
    "org-8fJ2kL0pQ9wE3rT5yU1i",
    "AKIAIOSFODNN7EXAMPLE",
    "req_4b8e2f9a1c7d3e6b5a0f",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "3f786850e387550fdab836ed7e6dc881de23001b",
    "dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEyMzQ1Njc4OTA",
)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


def target(port: int = 9) -> DeploymentTarget:
    return DeploymentTarget(
        id=41,
        model_name="public-model",
        litellm_model="openai/internal-gpt-prod-eu7",
        provider="openai",
        upstream_model="internal-gpt-prod-eu7",
        api_base=f"http://127.0.0.1:{port}/v1",
        api_key=PROVIDER_KEY,
        passthrough=True,
        created=0,
    )


def test_a_cleaned_message_keeps_the_explanation_and_names_the_public_model():
    cleaned = provider_message_clean(target(), leaky_message(9))
    assert HELPFUL in cleaned
    assert "public-model" in cleaned
    assert_clean(cleaned)


def test_context_window_messages_pass_unchanged():
    message = (
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
        "Please reduce the length of the messages."
    )
    assert provider_message_clean(target(), message) == message


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_every_status_mapping_cleans_the_message_and_logs_it_whole(status, caplog):
    body = json.dumps({"error": {"message": leaky_message(9), "type": "invalid_request_error"}}).encode()
    with caplog.at_level(logging.WARNING, logger="routing.upstream"):
        error = provider_errors.upstream_status_error(target(), status, body, None)
    assert_clean(error.message)
    assert HELPFUL in error.message
    assert "openai/internal-gpt-prod-eu7" not in error.message
    assert PROVIDER_KEY in caplog.text and "internal-gpt-prod-eu7" in caplog.text, "operators see the original"


def test_litellm_errors_are_cleaned_too():
    class APIConnectionError(Exception):
        pass

    class BadRequestError(Exception):
        status_code = 400

    for exc in (
        APIConnectionError(leaky_message(9)),
        BadRequestError(leaky_message(9)),
        RuntimeError(leaky_message(9)),
    ):
        assert_clean(provider_errors.litellm_error(target(), exc).message)


@pytest.fixture
def leaky_provider(transactional_db: None) -> tuple[int, ModelDeployment]:
    """A deployment whose provider (run inside the test's event loop) fails with a leaky message."""
    port = free_port()
    deployment = deployment_save(
        deployment=ModelDeployment(
            model_name="public-model",
            litellm_model="openai/internal-gpt-prod-eu7",
            api_base=f"http://127.0.0.1:{port}/v1",
            api_key=PROVIDER_KEY,
        ),
        actor="test",
    )
    return port, deployment


def provider_app(port: int, status: int) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        error = {"error": {"message": leaky_message(port), "type": "invalid_request_error", "code": None}}
        if not payload.get("stream") or status != 200:
            return web.json_response(error, status=status or 400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def request_through(port: int, status: int, secret: str, stream: bool) -> Answer:
    return chat_through(provider_app(port, status), port, secret=secret, model="public-model", stream=stream)


@pytest.mark.parametrize(("status", "stream"), [(400, False), (401, False), (500, False), (429, True)])
def test_a_provider_error_reaches_the_client_without_secrets(owner_key, leaky_provider, status, stream):
    port, _ = leaky_provider
    answer = request_through(port, status, owner_key.secret, stream)
    assert answer.status >= 400
    assert_clean(answer.body.decode())
    assert HELPFUL in answer.error["message"]


def test_an_error_event_inside_a_stream_is_cleaned(owner_key, leaky_provider):
    port, _ = leaky_provider
    answer = request_through(port, 200, owner_key.secret, True)
    assert answer.status == 200
    text = answer.body.decode()
    assert '"error"' in text and HELPFUL in text
    assert_clean(text)
