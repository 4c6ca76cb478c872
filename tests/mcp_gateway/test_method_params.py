"""Params the methods answered without reading are checked like the others."""

from __future__ import annotations

import pytest

from tests.keys import Issued
from tests.mcp_gateway.inprocess import auth_headers, request, rpc

pytestmark = pytest.mark.django_db(transaction=True)


async def test_logging_set_level_takes_only_the_levels_the_spec_names(owner_key: Issued) -> None:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    created = await request("POST", "/mcp", auth_headers(owner_key.secret), rpc("initialize", params))
    session = auth_headers(
        owner_key.secret, mcp_session_id=created.headers[b"mcp-session-id"].decode(), mcp_protocol_version="2025-11-25"
    )

    accepted = await request("POST", "/mcp", session, rpc("logging/setLevel", {"level": "warning"}))
    assert accepted.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    for wrong in ({"level": "verbose"}, {"level": 5}, {"level": None}, {}):
        refused = await request("POST", "/mcp", session, rpc("logging/setLevel", wrong))
        assert refused.json()["error"]["code"] == -32602, (wrong, refused.json())
