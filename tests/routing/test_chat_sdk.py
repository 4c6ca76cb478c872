"""The official openai SDK against a live daphne server: chat, streaming, models, usage."""

from __future__ import annotations

import openai
import pytest

from tests.request_logs import wait_for_log


@pytest.fixture
def client(server, owner_key, deployment_factory):
    deployment_factory()
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=owner_key.secret, max_retries=0)


def test_chat_completion_through_sdk_records_usage(client, owner_key):
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    completion = response.parse()
    assert completion.choices[0].message.content.startswith("Hello from the fake upstream")
    assert completion.usage.completion_tokens == 8
    request_id = response.headers["x-request-id"]
    assert float(response.headers["x-gateway-overhead-ms"]) >= 0
    log = wait_for_log(request_id=request_id)
    assert log.api_key_id == owner_key.key.pk
    assert log.status_code == 200 and not log.stream
    assert (log.prompt_tokens, log.completion_tokens) == (completion.usage.prompt_tokens, 8)
    assert log.cost_usd > 0
    assert log.model_served == "openai/gpt-4o-mini"


def test_streamed_completion_arrives_in_chunks_and_ends_cleanly(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi [[fake chunks=5]]"}], stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello from the fake upstream."
    assert all(chunk.usage is None for chunk in chunks), "usage chunk must not reach a client that did not ask"


def test_stream_options_include_usage_is_honoured(client):
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi [[fake chunks=3]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    log = wait_for_log(request_id=request_id)
    assert log.stream and log.completion_tokens == 3 and log.ttfb_ms is not None and not log.usage_estimated


def test_models_list_shows_only_models_the_key_may_use(server, owner, key_factory, deployment_factory):
    deployment_factory("gpt-4o-mini")
    deployment_factory("gpt-4o", "openai/gpt-4o")
    limited = key_factory(owner, "limited", allowed_models=["gpt-4o"])
    everything = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key_factory(owner).secret, max_retries=0)
    narrow = openai.OpenAI(base_url=f"{server.url}/v1", api_key=limited.secret, max_retries=0)
    assert sorted(model.id for model in everything.models.list()) == ["gpt-4o", "gpt-4o-mini"]
    assert [model.id for model in narrow.models.list()] == ["gpt-4o"]
