"""Chat, completions and embeddings answer hostile bodies and headers with a 400/401 naming the problem."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from audit.models import AuditEvent
from audit.services import deferred_audit
from routing import upstream
from tenants import services
from tenants.models import Quota
from tests.fuzz import Answer, asgi_request, assert_api_answer

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello"}]


def call(path: str, body: bytes | dict, *, secret: str | None = None, headers=None) -> Answer:
    headers = list(headers or [])
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def run() -> Answer:
        try:
            return await asgi_request("POST", path, headers=headers, body=data)
        finally:
            await upstream._session().close()  # the session belongs to this short-lived loop

    answer = asyncio.run(run())
    assert_api_answer(answer)
    return answer


@pytest.fixture
def deployed(deployment_factory):
    deployment_factory()
    deployment_factory("embedder", "openai/text-embedding-3-small")


DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", DEEP),
        ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        (
            "/v1/completions",
            b'{"model": "gpt-4o-mini", "prompt": "hi", "x": ' + b"[" * 300 + b"]" * 300 + b"}",
        ),
        ("/v1/embeddings", DEEP),
    ],
)
def test_json_nested_beyond_the_limit_is_a_400_on_every_model_endpoint(owner_key, deployed, path, body):
    answer = call(path, body, secret=owner_key.secret)
    assert answer.status == 400, answer.body
    assert answer.error["code"] == "invalid_json" and "nested too deeply" in answer.error["message"]


@pytest.mark.parametrize("role", [["user"], {"user": 1}, 7, None, True])
def test_a_role_of_the_wrong_type_is_a_400_naming_it(owner_key, deployed, role):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}, {"role": role, "content": "b"}]}
    answer = call("/v1/chat/completions", body, secret=owner_key.secret)
    assert answer.status == 400, answer.body
    assert answer.error["param"] == "messages[1].role"


@pytest.mark.parametrize("model", ["gpt\x00-4o-mini", "m" * 201])
def test_a_model_name_with_nul_or_longer_than_any_deployment_is_a_400(owner_key, deployed, model):
    answer = call("/v1/chat/completions", {"model": model, "messages": HELLO}, secret=owner_key.secret)
    assert answer.status == 400 and answer.error["param"] == "model"


def test_best_of_below_n_is_a_400(owner_key, deployed):
    body = {"model": "gpt-4o-mini", "prompt": "hi", "n": 3, "best_of": 2}
    answer = call("/v1/completions", body, secret=owner_key.secret)
    assert answer.status == 400 and answer.error["param"] == "best_of"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "embedder", "input": "hi", "max_tokens": [1]}),
        ("/v1/embeddings", {"model": "embedder", "input": "hi", "max_completion_tokens": "many"}),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi", "max_completion_tokens": {"a": 1}}),
    ],
)
def test_parameters_an_endpoint_does_not_use_never_break_the_quota_reservation(
    owner, key_factory, deployed, path, body
):
    issued = key_factory(owner, "limited")
    services.quota_save(quota=Quota(api_key=issued.key, tpm_limit=100_000), actor="test")
    answer = call(path, body, secret=issued.secret)
    assert answer.status == 200, answer.body


def test_two_authorization_headers_on_chat_are_refused_not_billed_to_either(owner_key, deployed, outsider, key_factory):
    other = key_factory(outsider, "other")
    headers = [
        (b"authorization", f"Bearer {owner_key.secret}".encode()),
        (b"authorization", f"Bearer {other.secret}".encode()),
    ]
    for path, body in (
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}),
        ("/v1/embeddings", {"model": "embedder", "input": "hi"}),
    ):
        answer = call(path, body, headers=headers)
        assert answer.status == 401, answer.body
        assert answer.error["code"] == "ambiguous_credentials"


def test_a_real_client_sending_two_authorization_headers_gets_401_everywhere(
    server, owner_key, deployed, outsider, key_factory
):
    other = key_factory(outsider, "other")
    headers = [("Authorization", f"Bearer {owner_key.secret}"), ("Authorization", f"Bearer {other.secret}")]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, body in (
            ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}),
            ("POST", "/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}),
            ("GET", "/v1/models", None),
            ("POST", "/v1/feedback", {"request_id": "req_x", "score": 1}),
        ):
            response = client.request(method, path, headers=headers, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "ambiguous_credentials", path


def test_a_credential_with_a_nul_is_refused_and_its_failure_audited_without_the_nul(owner_key, deployed):
    secret = owner_key.secret
    broken = [(b"authorization", f"Bearer {secret[:6]}\x00{secret[6:]}".encode())]
    assert call("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, headers=broken).status == 401
    models = asyncio.run(asgi_request("GET", "/v1/models", headers=broken))
    assert_api_answer(models)
    assert models.status == 401
    deferred_audit.flush_now()
    # (Refusals of earlier tests' live-server requests may still arrive: only this key's count.)
    actors = list(
        AuditEvent.objects.filter(action="auth.failure", actor__startswith="key:").values_list("actor", flat=True)
    )
    assert len(actors) == 2 and all("\ufffd" in actor and "\x00" not in actor for actor in actors), actors
