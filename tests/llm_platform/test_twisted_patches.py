"""TWISTED_PATCHES: on, Twisted's refusals of a bad request head are JSON; off, they are Twisted's own;
either way a request is parsed the same."""

from __future__ import annotations

import httpx
from twisted.web import http as twisted_http

from tests import live
from tests.llm_platform.test_header_limits import HUGE, raw_exchange

CONTENT_TYPES = [
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/x-www-form-urlencoded",
    b"text/plain;charset=latin-1",
    b"",
]


def test_the_cached_content_type_parser_answers_as_twisteds_own():
    import llm_platform.asgi  # noqa: F401  # applies the patches (TWISTED_PATCHES is on by default)

    cached = twisted_http._parseContentType
    assert hasattr(cached, "cache_info")
    for content_type in CONTENT_TYPES * 2:
        assert cached(content_type) == cached.__wrapped__(content_type)


def answers(server: live.Server) -> dict[str, tuple[int, bytes, bytes]]:
    """The same cases against one server: status, Content-Type and body of each."""
    results = {}
    for content_type in CONTENT_TYPES:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers={"Content-Type": content_type.decode(), "Authorization": "Bearer sk-nope"},
            content=b'{"model": "m", "messages": []}',
            timeout=15,
        )
        results[f"post {content_type!r}"] = (
            response.status_code,
            response.headers.get("content-type", "").encode(),
            response.content,
        )
    huge = raw_exchange(server.url, f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {HUGE}\r\n\r\n".encode())
    results["huge header"] = (0, b"", huge)
    # Twisted parses a multipart body itself, and refuses one that is not.
    bad_form = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        content=b"{}",
        timeout=15,
    )
    results["bad form"] = (bad_form.status_code, bad_form.headers.get("content-type", "").encode(), bad_form.content)
    results["malformed"] = (0, b"", raw_exchange(server.url, b"NONSENSE\r\nHost: x\r\n\r\n"))
    return results


def test_the_switch_changes_only_the_refusals_of_bad_heads(django_db_setup, django_db_blocker, session_tmp):
    with live.daphne_server(session_tmp, TWISTED_PATCHES="true") as server:
        on = answers(server)
    with live.daphne_server(session_tmp, TWISTED_PATCHES="false") as server:
        off = answers(server)
    for case in on:
        if case.startswith("post "):
            assert on[case] == off[case], case
            assert on[case][1] == b"application/json"
    # On: JSON errors. Off: Twisted's own, a closed connection and a bare 400.
    assert on["huge header"][2].startswith(b"HTTP/1.1 431 ")
    assert b'"request_header_fields_too_large"' in on["huge header"][2]
    assert off["huge header"][2] == b""
    assert on["bad form"][:2] == (400, b"application/json") and b'"bad_request"' in on["bad form"][2]
    assert off["bad form"] == (400, b"", b"")
    assert on["malformed"][2].startswith(b"HTTP/1.1 400 ") and b'"error"' in on["malformed"][2]
    head, _, body = off["malformed"][2].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" not in head and b'"error"' not in body
