"""Every refusal and failure is an OpenAI-style JSON error with the right status, and the SDK
raises the matching exception class."""

from __future__ import annotations

import datetime as dt

import httpx
import openai
import pytest
from django.utils import timezone

from audit.models import AuditEvent
from routing.models import RequestLog
from tenants import services
from tests.live import free_port
from tests.request_logs import wait_for_log

HELLO = [{"role": "user", "content": "hello"}]


def sdk(server, secret):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)


def assert_error_body(body, *, type_, code=None, param=None):
    assert set(body) == {"message", "type", "code", "param"}
    assert body["message"]
    assert body["type"] == type_
    if code is not None:
        assert body["code"] == code
    assert body["param"] == param


@pytest.fixture
def chat(server, owner_key, deployment_factory):
    deployment_factory()
    return sdk(server, owner_key.secret)


def post(server, body, secret=None, **headers):
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers, timeout=30)


def test_unknown_key_is_401_and_audited(server, chat):
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(server, "sk-not-a-real-key-000000000000").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert refused.value.status_code == 401
    assert_error_body(refused.value.body, type_="authentication_error", code="invalid_api_key")
    assert "sk-not-a-real-key" not in refused.value.body["message"], "the key must not be echoed back whole"
    deadline = timezone.now() + dt.timedelta(seconds=10)
    while not AuditEvent.objects.filter(action="auth.failure", actor="key:sk-not-a-rea").exists():
        assert timezone.now() < deadline, "no audit event for the failed authentication"


def test_missing_authorization_header_is_401(server, chat):
    response = post(server, b'{"model": "gpt-4o-mini", "messages": []}')
    assert response.status_code == 401
    assert response.headers["x-request-id"].startswith("req_")
    assert_error_body(response.json()["error"], type_="authentication_error", code="missing_api_key")


def test_revoked_key_is_401(server, chat, owner_key):
    services.api_key_revoke(api_key=owner_key.key, actor="test")
    with pytest.raises(openai.AuthenticationError) as refused:
        chat.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert_error_body(refused.value.body, type_="authentication_error", code="api_key_revoked")


def test_expired_key_is_401(server, chat, owner, key_factory):
    expired = key_factory(owner, "old")
    expired.key.expires_at = timezone.now() - dt.timedelta(minutes=1)
    services.api_key_update(api_key=expired.key, actor="test")
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(server, expired.secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert_error_body(refused.value.body, type_="authentication_error", code="api_key_expired")


def test_inactive_tenant_is_403(server, chat, owner):
    owner.is_active = False
    services.tenant_save(tenant=owner, actor="test")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert_error_body(refused.value.body, type_="permission_error", code="tenant_inactive")


def test_model_not_allowed_for_the_key_is_403(server, chat, owner, key_factory, deployment_factory):
    deployment_factory("gpt-4o", "openai/gpt-4o")
    narrow = key_factory(owner, "narrow", allowed_models=["gpt-4o-mini"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(server, narrow.secret).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert_error_body(refused.value.body, type_="permission_error", code="model_not_allowed", param="model")


def test_unknown_model_is_404(chat):
    with pytest.raises(openai.NotFoundError) as refused:
        chat.chat.completions.create(model="no-such-model", messages=HELLO)
    assert_error_body(refused.value.body, type_="invalid_request_error", code="model_not_found", param="model")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_required_parameter", "model"),
        (b'{"model": "gpt-4o-mini"}', "missing_required_parameter", "messages"),
        (b'{"model": 42, "messages": []}', "invalid_type", "model"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "invalid_type", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "wizard"}]}', "invalid_value", "messages[0].role"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"}', "invalid_type", "stream"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "temperature": "hot"}',
            "invalid_type",
            "temperature",
        ),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "temperature": 7}', "invalid_value", "temperature"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream_options": {}}',
            "invalid_value",
            "stream_options",
        ),
    ],
)
def test_bad_request_bodies_are_400_naming_the_param(server, chat, owner_key, body, code, param):
    response = post(server, body, owner_key.secret, **{"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert_error_body(response.json()["error"], type_="invalid_request_error", code=code, param=param)
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.status_code == 400 and log.api_key_id == owner_key.key.pk


def test_sdk_raises_bad_request_for_invalid_params(chat):
    with pytest.raises(openai.BadRequestError) as refused:
        chat.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert refused.value.body["param"] == "messages"


def test_wrong_method_is_405_json(server, chat, owner_key):
    response = httpx.get(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {owner_key.secret}"})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert {"x-request-id", "x-gateway-overhead-ms"} <= set(response.headers)


def test_oversized_body_is_413(server, chat, owner_key):
    too_big = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * (21 * 1024 * 1024) + b'"}]}'
    )
    response = post(server, too_big, owner_key.secret)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_api_route_is_404_json_not_html(server):
    response = httpx.post(f"{server.url}/v1/no/such/route", content=b"{}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "unknown_url"
    assert "x-request-id" in response.headers


def test_models_list_with_a_bad_key_is_401_json(server):
    response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer sk-wrong-wrong-wrong-wrong"})
    assert response.status_code == 401
    assert_error_body(response.json()["error"], type_="authentication_error", code="invalid_api_key")
    assert "x-request-id" in response.headers


@pytest.mark.parametrize(
    ("directive", "error", "status", "code"),
    [
        ("[[fake status=500]]", openai.InternalServerError, 502, "upstream_error"),
        ("[[fake status=503]]", openai.InternalServerError, 503, "upstream_unavailable"),
        ("[[fake status=429]]", openai.RateLimitError, 429, "upstream_rate_limited"),
        ("[[fake status=401]]", openai.InternalServerError, 502, "upstream_auth_error"),
        ("[[fake status=400]]", openai.BadRequestError, 400, "upstream_rejected_request"),
    ],
)
def test_provider_failures_map_to_gateway_statuses(chat, directive, error, status, code):
    with pytest.raises(error) as failed:
        chat.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": directive}])
    assert failed.value.status_code == status
    assert failed.value.body["code"] == code
    log = wait_for_log(request_id=failed.value.response.headers["x-request-id"])
    assert log.status_code == status and log.error_type == code


def test_unreachable_provider_is_502(server, owner_key, deployment_factory):
    deployment_factory("dead", api_base=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(server, owner_key.secret).chat.completions.create(model="dead", messages=HELLO)
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_unreachable"


def test_slow_provider_is_504(server, owner_key, deployment_factory):
    deployment_factory("slow", extra_params={"timeout": 0.5})
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(server, owner_key.secret).chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "[[fake delay_ms=3000]]"}]
        )
    assert failed.value.status_code == 504
    assert failed.value.body["code"] == "upstream_timeout"


def test_stream_failing_before_the_first_byte_is_a_plain_json_error(chat):
    with pytest.raises(openai.InternalServerError) as failed:
        chat.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fake status=500]]"}], stream=True
        )
    assert failed.value.status_code == 502


def test_stream_broken_mid_way_ends_with_an_sse_error_event_not_a_hang(server, chat, owner_key):
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, '
        b'"messages": [{"role": "user", "content": "[[fake chunks=10 drop_after=3]]"}]}'
    )
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {owner_key.secret}"},
        timeout=15,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "broke off" in events[-2]
    assert sum('"content"' in event for event in events[:-2]) >= 3
    log = wait_for_log(request_id=request_id)
    assert log.status_code == 502 and log.stream and log.error_type == "upstream_unreachable"


def test_no_error_response_is_html(server, chat, owner_key):
    for response in (
        post(server, b"{", owner_key.secret),
        post(server, b"{}", "sk-bad-bad-bad-bad-bad"),
        httpx.get(f"{server.url}/v1/models"),
        httpx.get(f"{server.url}/v1/nothing"),
    ):
        assert response.status_code >= 400
        assert "html" not in response.headers.get("content-type", "")
        assert "error" in response.json()
    assert RequestLog.objects.filter(status_code=500).count() == 0


def test_key_scopes_limit_which_endpoints_it_may_call(server, chat, owner, key_factory):
    models_only = sdk(server, key_factory(owner, "models only", scopes=["models"]).secret)
    assert [m.id for m in models_only.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        models_only.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert_error_body(refused.value.body, type_="permission_error", code="scope_not_allowed")
    assert "'chat'" in refused.value.body["message"]
    chat_only = sdk(server, key_factory(owner, "chat only", scopes=["chat"]).secret)
    assert chat_only.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.models.list()
