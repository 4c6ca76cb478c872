"""A quota reservation covers everything a request can generate: every completion, every prompt."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.conf import settings

from routing import upstream
from routing.parsing import CHAT, COMPLETIONS, EMBEDDINGS
from routing.tokens import reservation_estimate
from tenants import services
from tenants.models import Quota
from tests.fuzz import Answer, asgi_request, assert_api_answer

pytestmark = pytest.mark.django_db(transaction=True)


def post(path: str, body: dict, secret: str) -> Answer:
    async def run() -> Answer:
        try:
            return await asgi_request(
                "POST", path, headers=[(b"authorization", f"Bearer {secret}".encode())], body=json.dumps(body).encode()
            )
        finally:
            await upstream._session().close()

    answer = asyncio.run(run())
    assert_api_answer(answer)
    return answer


@pytest.fixture
def limited(owner, key_factory, deployment_factory):
    """A key whose output-token quota admits one 100-token completion a minute, but not eight."""
    deployment_factory()
    issued = key_factory(owner, "limited")
    services.quota_save(quota=Quota(api_key=issued.key, output_tpm_limit=500), actor="test")
    if time.time() % 60 > 55:  # keep both requests in one per-minute window
        time.sleep(61 - time.time() % 60)
    return issued


@pytest.mark.parametrize(
    ("path", "many", "one"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "n": 8},
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100},
        ),
        (
            "/v1/chat/completions",
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "max_completion_tokens": 100,
                "n": 8,
            },
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100},
        ),
        (
            "/v1/completions",
            {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 100, "best_of": 8},
            {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 100},
        ),
        (
            "/v1/completions",
            {"model": "gpt-4o-mini", "prompt": ["hi"] * 8, "max_tokens": 100},
            {"model": "gpt-4o-mini", "prompt": ["hi"], "max_tokens": 100},
        ),
    ],
)
def test_a_token_quota_that_admits_one_completion_refuses_eight(limited, path, many, one):
    refused = post(path, many, limited.secret)
    assert refused.status == 429, refused.body
    assert refused.error["code"] == "output_tpm_limit_exceeded"
    assert post(path, one, limited.secret).status == 200


def test_embeddings_reserve_no_output_tokens(owner, key_factory, deployment_factory):
    deployment_factory("embedder", "openai/text-embedding-3-small")
    issued = key_factory(owner, "embedder")
    # Fewer tokens a minute than the default output reservation: only the input counts.
    services.quota_save(
        quota=Quota(api_key=issued.key, tpm_limit=settings.QUOTA_DEFAULT_OUTPUT_TOKENS // 2), actor="test"
    )
    answer = post("/v1/embeddings", {"model": "embedder", "input": "hello"}, issued.secret)
    assert answer.status == 200, answer.body


def test_token_array_input_reserves_every_token():
    tokens = [1] * 3000  # "1, " is three bytes: four bytes a token would reserve ~2,250
    body_size = len(json.dumps({"model": "m", "input": tokens}))
    assert reservation_estimate(EMBEDDINGS, {"input": tokens}, body_size) == (3000, 0)
    assert reservation_estimate(EMBEDDINGS, {"input": [tokens, tokens]}, body_size * 2)[0] == 6000
    assert reservation_estimate(COMPLETIONS, {"prompt": tokens, "max_tokens": 5}, body_size) == (3000, 5)


def test_completion_output_is_per_prompt_and_per_generated_completion():
    estimate = reservation_estimate
    assert estimate(COMPLETIONS, {"prompt": ["a", "b", "c"], "max_tokens": 10, "n": 2, "best_of": 4}, 40)[1] == 120
    assert estimate(COMPLETIONS, {"prompt": [[1, 2], [3]], "max_tokens": 10}, 40)[1] == 20
    assert estimate(COMPLETIONS, {"prompt": "a", "max_tokens": 0, "n": 3}, 40)[1] == 0
    assert estimate(CHAT, {"max_tokens": 10, "max_completion_tokens": 7, "n": 3}, 40)[1] == 21
    assert estimate(CHAT, {"n": 2}, 40)[1] == 2 * settings.QUOTA_DEFAULT_OUTPUT_TOKENS
