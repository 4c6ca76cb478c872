"""Requests to the gateway's ASGI application in this process (asgiref's ApplicationCommunicator), no server."""

from __future__ import annotations

import json
from typing import Any

from asgiref.testing import ApplicationCommunicator

# Imported with the test modules, not during a test: it configures logging again, which would
# take pytest's log capture off the root logger in the middle of that test.
from llm_platform.asgi import application as asgi_application
from tests.asgi import Answer, http_scope

ACCEPT = b"application/json, text/event-stream"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def application() -> Any:
    return asgi_application


def auth_headers(secret: str, **extra: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"authorization", f"Bearer {secret}".encode()),
        (b"accept", ACCEPT),
        (b"content-type", b"application/json"),
    ]
    return headers + [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in extra.items()]


def modern_headers(secret: str, method: str, name: str | None = None) -> list[tuple[bytes, bytes]]:
    """Headers of a stateless (2026-07-28) request, mirroring the body as the spec asks."""
    extra = {"mcp_protocol_version": "2026-07-28", "mcp_method": method}
    if name is not None:
        extra["mcp_name"] = name
    return auth_headers(secret, **extra)


async def request(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    query: bytes = b"",
    wait: float = 30,
    chunk: int = 0,
) -> Answer:
    """One complete request and its whole response (a stream is read until it ends).

    ``chunk`` > 0 sends the body in pieces of that size, as a server hands a large body on.
    """
    scope = http_scope(method, path, headers, host="localhost")
    scope["query_string"] = query
    communicator = ApplicationCommunicator(application(), scope)
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk and body else [body]
    for index, piece in enumerate(pieces):
        await communicator.send_input({"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1})
    start = await communicator.receive_output(wait)
    chunks = []
    while True:
        message = await communicator.receive_output(wait)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(wait)
    return Answer(int(start["status"]), dict(start.get("headers", [])), b"".join(chunks))


def rpc(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


async def modern_call(secret: str, method: str, params: dict[str, Any], *, path: str = "/mcp") -> Answer:
    """A stateless request with ``params._meta`` and the mirrored headers filled in."""
    name = params.get("uri" if method == "resources/read" else "name")
    headers = modern_headers(secret, method, name if isinstance(name, str) else None)
    return await request("POST", path, headers, rpc(method, {**params, "_meta": META}))


class LegacyStream:
    """A legacy-SSE stream (``GET /mcp/sse``) held open in process: its endpoint and the events it carries."""

    def __init__(self, secret: str, path: str = "/mcp/sse") -> None:
        headers = [(b"authorization", f"Bearer {secret}".encode()), (b"accept", b"text/event-stream")]
        self.communicator = ApplicationCommunicator(application(), http_scope("GET", path, headers, host="localhost"))
        self.endpoint = ""
        self.buffer = b""

    async def open(self) -> LegacyStream:
        await self.communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await self.communicator.receive_output(30)
        assert start["status"] == 200, start
        while b"\n\n" not in self.buffer:
            self.buffer += (await self.communicator.receive_output(30)).get("body", b"")
        frame, _, self.buffer = self.buffer.partition(b"\n\n")
        self.endpoint = frame.decode().split("data: ", 1)[1]
        return self

    @property
    def session_query(self) -> bytes:
        return self.endpoint.split("?", 1)[1].encode()

    async def message(self, wait: float = 10) -> dict[str, Any]:
        """The next JSON-RPC message on the stream (heartbeats skipped)."""
        while True:
            while b"\n\n" not in self.buffer:
                self.buffer += (await self.communicator.receive_output(wait)).get("body", b"")
            frame, _, self.buffer = self.buffer.partition(b"\n\n")
            for line in frame.decode().splitlines():
                if line.startswith("data: "):
                    return json.loads(line[6:])

    async def close(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(10)
