"""Bodies that are not JSON the gateway can pass on (lone surrogates, extreme nesting, NaN) are parse errors."""

from __future__ import annotations

import json

import pytest

from tests.keys import Issued
from tests.mcp_gateway.inprocess import META, LegacyStream, auth_headers, modern_headers, request

pytestmark = pytest.mark.django_db(transaction=True)

SURROGATE = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"\\ud800"}}}'
)
DEEP = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
NON_FINITE = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.add","arguments":{"a":NaN,"b":1}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.add","arguments":{"a":Infinity}}}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":[-Infinity]}}]',
)


def _parse_error(answer: object, code: str | None = None) -> None:
    assert answer.status == 400, (answer.status, answer.body[:300])  # type: ignore[attr-defined]
    error = answer.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == -32700, error
    assert answer.json()["id"] is None  # type: ignore[attr-defined]
    if code is not None:
        assert error["data"]["code"] == code, error


async def test_a_lone_surrogate_or_50000_levels_of_nesting_on_mcp_is_a_parse_error(owner_key: Issued) -> None:
    for headers in (auth_headers(owner_key.secret), modern_headers(owner_key.secret, "tools/call", "demo.echo")):
        _parse_error(await request("POST", "/mcp", headers, SURROGATE), "invalid_unicode")
        _parse_error(await request("POST", "/mcp", headers, DEEP), "invalid_json")


async def test_nan_and_infinity_which_are_not_json_numbers_are_parse_errors(owner_key: Issued) -> None:
    for body in NON_FINITE:
        answer = await request("POST", "/mcp", auth_headers(owner_key.secret), body)
        _parse_error(answer, "invalid_json")
        assert "NaN" in answer.json()["error"]["message"]
    # The words themselves, inside strings, are ordinary text.
    params = {"note": "NaN and Infinity", "_meta": META}
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": params}).encode()
    discovered = await request("POST", "/mcp", modern_headers(owner_key.secret, "server/discover"), text)
    assert discovered.status == 200 and "result" in discovered.json()


async def test_malformed_bodies_on_the_legacy_messages_endpoint_are_parse_errors(owner_key: Issued) -> None:
    stream = await LegacyStream(owner_key.secret).open()
    try:
        for body, code in ((SURROGATE, "invalid_unicode"), (DEEP, "invalid_json"), (NON_FINITE[0], "invalid_json")):
            answer = await request(
                "POST", "/mcp/messages", auth_headers(owner_key.secret), body, query=stream.session_query
            )
            _parse_error(answer, code)
        # The session still works after them.
        ping = b'{"jsonrpc":"2.0","id":7,"method":"ping"}'
        accepted = await request(
            "POST", "/mcp/messages", auth_headers(owner_key.secret), ping, query=stream.session_query
        )
        assert accepted.status == 202
        assert await stream.message() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    finally:
        await stream.close()
