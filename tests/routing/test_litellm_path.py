"""Deployments that go through litellm (not the byte relay) behave the same for clients."""

from __future__ import annotations

import openai
import pytest

from tests.request_logs import wait_for_log


@pytest.fixture
def client(server, owner_key, deployment_factory):
    deployment_factory("via-litellm", "openai/gpt-4o-mini", extra_params={"passthrough": False})
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=owner_key.secret, max_retries=0)


def test_litellm_deployment_answers_and_records_usage(client):
    response = client.chat.completions.with_raw_response.create(
        model="via-litellm", messages=[{"role": "user", "content": "hello [[fake chunks=4]]"}]
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.status_code == 200 and log.completion_tokens == 4 and log.cost_usd > 0


def test_litellm_deployment_streams_with_usage_when_asked(client):
    stream = client.chat.completions.create(
        model="via-litellm",
        messages=[{"role": "user", "content": "hello [[fake chunks=3]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello from the"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_litellm_deployment_maps_provider_errors_like_the_relay(client):
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(
            model="via-litellm", messages=[{"role": "user", "content": "[[fake status=429]]"}]
        )
    assert raised.value.status_code == 429
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model="via-litellm", messages=[{"role": "user", "content": "[[fake status=500]]"}]
        )
    assert failed.value.status_code == 502
    assert failed.value.body["type"] == "upstream_error"
