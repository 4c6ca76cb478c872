"""/v1/embeddings and /v1/completions with the official SDK: same auth, scopes, quotas, routing, usage."""

from __future__ import annotations

import httpx
import openai
import pytest

from tenants import services
from tenants.models import Quota
from tests.request_logs import wait_for_log
from tests.routing.fake_upstreams import behave


@pytest.fixture
def client(routing_server, owner_key):
    return openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=owner_key.secret, max_retries=0)


def test_embeddings_through_the_sdk_are_routed_and_recorded(client, fakes, route_group, owner_key):
    deployments = route_group("embed", [fakes[0]])
    response = client.embeddings.with_raw_response.create(model="embed", input=["first text", "second text"])
    result = response.parse()  # the SDK asks for base64 and decodes it
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8 and result.data[0].embedding != result.data[1].embedding
    assert all(0 <= value <= 1 for value in result.data[0].embedding)
    assert response.headers["x-route-model"] == "embed"
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.endpoint == "embeddings" and log.status_code == 200
    assert log.api_key_id == owner_key.key.pk and log.deployment_id == deployments[0].pk
    assert log.prompt_tokens == result.usage.prompt_tokens > 0
    assert len(log.route_decision["prompt_sha256"]) == 64


def test_embeddings_as_floats_and_with_dimensions(client, fakes, route_group):
    route_group("embed-floats", [fakes[0]])
    result = client.embeddings.create(model="embed-floats", input="text", encoding_format="float", dimensions=4)
    assert len(result.data[0].embedding) == 4


def test_embeddings_fail_over_like_chat(client, fakes, route_group):
    behave(fakes[0], status=500)
    deployments = route_group("embed-pair", [fakes[0], fakes[1]], params=[{"weight": 1000}, {"weight": 1}])
    response = client.embeddings.with_raw_response.create(model="embed-pair", input="text")
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.route_decision["attempts"][0]["deployment"] == deployments[0].pk
    assert log.deployment_id == deployments[1].pk


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "embed-bad"}, "input", "missing_required_parameter"),
        ({"model": "embed-bad", "input": ""}, "input", "invalid_value"),
        ({"model": "embed-bad", "input": []}, "input", "invalid_value"),
        ({"model": "embed-bad", "input": [1, "a"]}, "input", "invalid_type"),
        ({"model": "embed-bad", "input": "x", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        ({"model": "embed-bad", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
    ],
)
def test_bad_embedding_requests_are_400_naming_the_param(
    routing_server, owner_key, fakes, route_group, body, param, code
):
    route_group("embed-bad", [fakes[0]])
    response = httpx.post(
        f"{routing_server.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {owner_key.secret}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param and response.json()["error"]["code"] == code


def test_scopes_embeddings_and_chat_are_separate(routing_server, owner, key_factory, fakes, route_group):
    route_group("scoped", [fakes[0]])
    chat_only = key_factory(owner, "chat only", scopes=["chat"])
    embed_only = key_factory(owner, "embed only", scopes=["embeddings"])
    chat_client = openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=chat_only.secret, max_retries=0)
    embed_client = openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=embed_only.secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_client.embeddings.create(model="scoped", input="x")
    assert refused.value.body["code"] == "scope_not_allowed"
    assert chat_client.completions.create(model="scoped", prompt="x").choices[0].text
    with pytest.raises(openai.PermissionDeniedError):
        embed_client.completions.create(model="scoped", prompt="x")
    assert embed_client.embeddings.create(model="scoped", input="x").data


def test_text_completion_through_the_sdk(client, fakes, route_group):
    route_group("instruct", [fakes[1]])
    response = client.completions.with_raw_response.create(model="instruct", prompt="Say hello", max_tokens=5)
    completion = response.parse()
    assert completion.choices[0].text.startswith("Hello")
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.endpoint == "completions" and log.completion_tokens == completion.usage.completion_tokens


def test_streamed_text_completion_through_the_sdk_with_usage(client, fakes, route_group):
    route_group("instruct-stream", [fakes[1]])
    stream = client.completions.with_raw_response.create(
        model="instruct-stream",
        prompt="Say hello [[fake chunks=5]]",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream.parse())
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text.startswith("Hello")
    assert chunks[-1].usage.completion_tokens == 5
    log = wait_for_log(request_id=stream.headers["x-request-id"])
    assert log.endpoint == "completions" and log.stream and log.completion_tokens == 5 and not log.usage_estimated


def test_streamed_text_completion_fails_over_before_the_first_byte(client, fakes, route_group):
    behave(fakes[0], drop_after=-2)
    deployments = route_group("instruct-pair", [fakes[0], fakes[1]], params=[{"weight": 1000}, {"weight": 1}])
    stream = client.completions.with_raw_response.create(model="instruct-pair", prompt="hi", stream=True)
    assert "".join(c.text for chunk in stream.parse() for c in chunk.choices).startswith("Hello")
    log = wait_for_log(request_id=stream.headers["x-request-id"])
    assert log.deployment_id == deployments[1].pk


def test_quotas_count_embeddings_and_completions(routing_server, owner, key_factory, fakes, route_group):
    route_group("limited", [fakes[0]])
    issued = key_factory(owner, "limited key")
    services.quota_save(quota=Quota(api_key=issued.key, rpm_limit=2), actor="test")
    client = openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=issued.secret, max_retries=0)
    client.embeddings.create(model="limited", input="x")
    client.completions.create(model="limited", prompt="x")
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model="limited", input="x")
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_unknown_model_on_embeddings_is_404(client, fakes):
    with pytest.raises(openai.NotFoundError) as refused:
        client.embeddings.create(model="no-such-embedder", input="x")
    assert refused.value.body["code"] == "model_not_found"
