"""The ninja API under /v1 answers hostile input with OpenAI-style JSON errors: never a 500, never HTML."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import override_settings

from tests.fuzz import Answer, asgi_request, assert_api_answer

pytestmark = pytest.mark.django_db(transaction=True)


def call(method: str, path: str, secret: str | None = None, **kwargs) -> Answer:
    headers = list(kwargs.pop("headers", []))
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    answer = asyncio.run(asgi_request(method, path, headers=headers, **kwargs))
    assert_api_answer(answer)
    return answer


@pytest.fixture
def auditor(owner, key_factory):
    return key_factory(owner, "audit key", scopes=["audit"])


@pytest.mark.parametrize(
    ("query", "param"),
    [
        (b"actor=user%00x", "actor"),
        (b"action=%00", "action"),
        (b"cursor=abc%00", "cursor"),
        (b"since=2026-01-01T00:00:00Z%00", "since"),
        (b"x%00y=1", "x\\x00y"),
    ],
)
def test_nul_in_any_query_parameter_is_a_400_naming_it(auditor, query, param):
    answer = call("GET", "/v1/audit/events", auditor.secret, query=query)
    assert answer.status == 400, answer.body
    assert answer.error["param"] == param and answer.error["code"] == "invalid_value"
    assert "NUL" in answer.error["message"]


def test_nul_in_a_feedback_body_is_a_400_naming_the_field(owner_key):
    body = json.dumps({"request_id": "req_\x00abc", "score": 1}).encode()
    answer = call("POST", "/v1/feedback", owner_key.secret, body=body)
    assert answer.status == 400
    assert answer.error["param"] == "request_id"


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+23:59"],
)
def test_a_datetime_outside_utc_range_is_a_400_not_a_500(auditor, value):
    for name in ("since", "until"):
        answer = call("GET", "/v1/audit/events", auditor.secret, query=f"{name}={value}".replace("+", "%2B").encode())
        assert answer.status == 400, answer.body
        assert answer.error["param"] == name


def test_datetimes_at_the_edges_of_the_range_are_accepted(auditor):
    answer = call(
        "GET", "/v1/audit/events", auditor.secret, query=b"since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z"
    )
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"request_id": "req_1", "score": 1, "comment": "\\ud800"}',
        b'{"request_id": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    ],
)
def test_a_feedback_body_too_deep_or_not_unicode_is_a_400(owner_key, body):
    answer = call("POST", "/v1/feedback", owner_key.secret, body=body)
    assert answer.status == 400
    assert answer.error["code"] in ("invalid_json", "invalid_unicode")


@override_settings(MAX_REQUEST_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_a_body_over_the_limit_on_a_ninja_route_is_a_413(owner_key):
    body = json.dumps({"request_id": "req_1", "score": 1, "comment": "x" * 5000}).encode()
    for headers in ([(b"content-length", str(len(body)).encode())], []):
        answer = call("POST", "/v1/feedback", owner_key.secret, body=body, headers=headers)
        assert answer.status == 413, answer.body
        assert answer.error["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "/v1/models"), ("POST", "/v1/audit/events"), ("GET", "/v1/feedback")]
)
def test_a_wrong_method_on_a_ninja_route_is_a_json_405(owner_key, method, path):
    answer = call(method, path, owner_key.secret)
    assert answer.status == 405
    assert answer.error["code"] == "method_not_allowed"
    assert b"allow" in answer.headers


def test_two_authorization_headers_on_a_ninja_route_are_refused_as_ambiguous(owner_key, outsider, key_factory):
    other = key_factory(outsider, "other")
    headers = [
        (b"authorization", f"Bearer {owner_key.secret}".encode()),
        (b"authorization", f"Bearer {other.secret}".encode()),
    ]
    answer = call("GET", "/v1/models", headers=headers)
    assert answer.status == 401
    assert answer.error["code"] == "ambiguous_credentials"
    assert call("GET", "/v1/models", owner_key.secret).status == 200


def test_a_bad_host_header_on_v1_is_a_json_400(owner_key):
    answer = call("GET", "/v1/models", owner_key.secret, headers=[(b"host", b"evil..example")])
    assert answer.status == 400


@pytest.mark.parametrize("query", [b"\x80", b"actor=\xff\xfe", b"limit=1&\xc3\x28=x"])
def test_a_query_string_that_is_not_utf8_is_a_json_400(auditor, query):
    answer = call("GET", "/v1/audit/events", auditor.secret, query=query)
    assert answer.status == 400
    assert b"x-request-id" in answer.headers


def test_a_post_to_a_ninja_page_without_a_route_is_json_not_a_csrf_page(owner_key):
    answer = call("POST", "/v1/", owner_key.secret)
    assert answer.status in (403, 404, 405)


def test_repeated_content_length_headers_are_a_400_not_a_500(owner_key):
    headers = [(b"content-length", b"0"), (b"content-length", b"0")]
    answer = call("GET", "/v1/models", owner_key.secret, headers=headers)
    assert answer.status == 400 and answer.error["code"] == "invalid_content_length"
