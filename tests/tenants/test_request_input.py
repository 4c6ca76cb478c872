"""The shared readers of untrusted input: JSON bodies and the credential header."""

from __future__ import annotations

import json

import pytest

from core.errors import AuthenticationFailed, InvalidRequest
from tenants.request_input import MAX_CREDENTIAL_BYTES, MAX_JSON_DEPTH, credential_header, json_body_parse


def test_a_document_nested_deeper_than_the_limit_is_a_400_not_a_recursion_error() -> None:
    for depth in (MAX_JSON_DEPTH + 1, 50_000):
        with pytest.raises(InvalidRequest) as caught:
            json_body_parse(b"[" * depth + b"]" * depth)
        assert caught.value.status == 400 and "nested too deeply" in caught.value.message


def test_a_document_at_the_depth_limit_parses() -> None:
    body = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert isinstance(json_body_parse(body), list)
    wide = json.dumps({"items": [{"a": [1]} for _ in range(500)]}).encode()
    assert len(json_body_parse(wide)["items"]) == 500


def test_a_lone_surrogate_anywhere_is_refused_and_pairs_are_not() -> None:
    for body in (
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"k\\udfff": 1}',
        b'["ok", {"x": ["\\uDBFF"]}]',
    ):
        with pytest.raises(InvalidRequest) as caught:
            json_body_parse(body)
        assert caught.value.code == "invalid_unicode"
    assert json_body_parse(b'{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\U0001f600"}


def test_invalid_json_and_non_utf8_bodies_are_400s() -> None:
    for body in (b"{", b"\xff\xfe{}", b""):
        with pytest.raises(InvalidRequest) as caught:
            json_body_parse(body)
        assert caught.value.code == "invalid_json"


def test_two_authorization_headers_are_refused_whatever_their_order() -> None:
    headers = [(b"authorization", b"Bearer sk-a"), (b"host", b"x"), (b"authorization", b"Bearer sk-b")]
    with pytest.raises(AuthenticationFailed) as caught:
        credential_header(headers)
    assert caught.value.code == "ambiguous_credentials" and caught.value.status == 401
    assert credential_header([(b"authorization", b"Bearer sk-a")]) == "Bearer sk-a"
    assert credential_header([(b"host", b"x")]) is None


def test_an_oversized_credential_header_is_refused() -> None:
    with pytest.raises(AuthenticationFailed):
        credential_header([(b"authorization", b"Bearer " + b"a" * MAX_CREDENTIAL_BYTES)])
