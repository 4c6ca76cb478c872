"""Oversized request heads on the real server (daphne) get a JSON error with a status, never an empty reply."""

from __future__ import annotations

import socket

import httpx
import pytest

from llm_platform.asgi import _header_refusals_json

HUGE = "Bearer sk-" + "x" * 20_000


def raw_exchange(server_url: str, head: bytes) -> bytes:
    """Send a request head byte for byte (no client library second-guessing it); all that comes back."""
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/embeddings"])
def test_an_authorization_header_over_16_kb_is_a_json_431_on_v1(server, path):
    response = httpx.post(f"{server.url}{path}", headers={"Authorization": HUGE}, content=b"{}", timeout=15)
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "request_header_fields_too_large" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "code", "param"}


def test_an_authorization_header_over_16_kb_on_mcp_is_a_json_rpc_error(server):
    response = httpx.post(f"{server.url}/mcp", headers={"Authorization": HUGE}, content=b"{}", timeout=15)
    assert response.status_code == 431
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32600


def test_a_head_over_16_kb_in_many_headers_is_a_json_431(server):
    headers = {f"x-filler-{n}": "y" * 900 for n in range(20)}
    response = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=15)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"


def test_a_request_line_over_16_kb_is_a_json_414(server):
    answer = raw_exchange(server.url, b"GET /v1/models?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ")
    assert b"application/json" in head and b'"request_line_too_large"' in body


def test_a_malformed_request_line_is_a_json_400(server):
    answer = raw_exchange(server.url, b"NONSENSE\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"error"' in answer


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/v1/models")])
def test_an_authorization_header_too_long_for_a_key_but_under_16_kb_is_the_apps_401(server, method, path):
    response = httpx.request(method, f"{server.url}{path}", headers={"Authorization": HUGE[:8000]}, timeout=15)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_authorization_header"


def test_the_patch_leaves_a_twisted_without_the_expected_methods_alone():
    class OtherChannel:
        pass

    _header_refusals_json(OtherChannel)
    assert not hasattr(OtherChannel, "_llmp_json_refusals")
