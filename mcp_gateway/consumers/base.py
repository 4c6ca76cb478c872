"""What every MCP consumer shares: body limit, header checks (Host, Origin, repeats, Accept), key auth, errors."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.exceptions import StopConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from core.consumers import BoundedHttpConsumer
from core.errors import PlatformError
from mcp_gateway.jsonrpc import INVALID_REQUEST, RpcError, platform_rpc_error
from mcp_gateway.selectors import catalog_cache
from mcp_gateway.sessions import McpSession, session_store
from mcp_gateway.streams import SseStream
from observability import telemetry
from tenants.auth import KeyContext, key_authenticate_request

logger = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]
# Headers read as one value (ASGI gives names in lower case); Accept, a list, may be repeated.
SINGLE_VALUED_HEADERS = frozenset(
    {
        b"host",
        b"origin",
        b"content-type",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"mcp-method",
        b"mcp-name",
        b"last-event-id",
    }
)


class McpConsumer(BoundedHttpConsumer):
    """Shared plumbing: body size limit, Origin check, API-key auth, JSON-RPC error responses."""

    # No channel layer (see BoundedHttpConsumer): legacy-SSE replies go through one mailbox per process (relay).

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers: dict[bytes, bytes] = {}
        self.status = 0  # of the response, once its headers are sent
        self.stream: SseStream | None = None  # a long-lived stream this request opened

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    @property
    def client_ip(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def body_received(self, body: bytes) -> None:
        self.headers = dict(self.scope["headers"])
        # A POST is one traced request (continuing the caller's traceparent); a GET stream may
        # stay open for hours and is not a span.
        trace = telemetry.server_span(self.route(), "POST", self.headers) if self.scope["method"] == "POST" else None
        keep_open = False
        try:
            self.headers_check()
            keep_open = await self.serve(body)
        except Exception as exc:
            keep_open = False
            await self.failure_reply(exc)
        finally:
            if trace is not None:
                trace.end(self.status or 500)
        if not keep_open:
            raise StopConsumer()

    async def failure_reply(self, exc: Exception) -> None:
        """Answer a request that failed: its JSON-RPC error, or, once a stream's headers are out, the stream's end."""
        if not isinstance(exc, (RpcError, PlatformError)):
            logger.exception("MCP request failed", exc_info=exc)
        if self.stream is not None:  # a stream that failed to open, or failed once open, ends here
            await self.stream.close()
        if self.status:  # a response has begun: a second one cannot be sent, the stream ends instead
            with contextlib.suppress(Exception):
                await self.send_body(b"", more_body=False)
            return
        if isinstance(exc, RpcError):
            await self.reply_error(exc)
        elif isinstance(exc, PlatformError):
            await self.reply_error(platform_rpc_error(exc), extra=self._auth_headers(exc))
        else:
            await self.reply_error(RpcError(-32603, "Internal error.", status=500))

    def route(self) -> str:
        """The path with a virtual server's name as ``{bundle}``: span names stay few."""
        path = self.scope.get("path", "")
        bundle = self.scope.get("url_route", {}).get("kwargs", {}).get("bundle")
        return path.replace(f"/{bundle}", "/{bundle}", 1) if bundle else path

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        self.status = status
        await super().send_headers(status=status, headers=headers)

    @staticmethod
    def _auth_headers(exc: PlatformError) -> list[tuple[bytes, bytes]]:
        if exc.status == 401:
            return [(b"www-authenticate", b'Bearer realm="mcp", error="invalid_token"')]
        return []

    async def serve(self, body: bytes) -> bool:
        """Answer the request; return True to keep the connection open (a stream)."""
        raise NotImplementedError

    async def reply(self, status: int, payload: Any = None, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """A JSON answer (``payload`` as an object, or as its encoded bytes), or an empty one."""
        if isinstance(payload, bytes):
            body = payload
        else:
            body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        response_headers = (JSON_HEADERS if payload is not None else []) + (headers or [])
        await self.send_response(status, body, headers=response_headers)

    async def reply_error(self, exc: RpcError, *, request_id: Any = None, extra: Any = None) -> None:
        await self.reply(exc.status if exc.status != 200 else 400, exc.response(request_id), extra)

    def origin_check(self) -> None:
        """Refuse browsers' cross-origin requests (DNS rebinding): Origin must be this host or allowed."""
        origin = self.header(b"origin")
        if not origin:
            return
        host = self.header(b"host") or ""
        if origin in settings.MCP_ALLOWED_ORIGINS or urlsplit(origin).netloc.lower() == host.lower():
            return
        raise RpcError(INVALID_REQUEST, f"Origin '{origin}' is not allowed.", status=403)

    def host_check(self) -> None:
        """The Host header must name this gateway (ALLOWED_HOSTS), as Django checks it for its own views.

        Channels consumers never reach Django's ``request.get_host()``, so without this a
        rebound DNS name pointing at a local gateway would be served.
        """
        host = self.header(b"host") or ""
        domain, _ = split_domain_port(host)
        allowed = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]  # what Django allows in DEBUG with none set
        if not domain or not validate_host(domain, allowed):
            raise RpcError(INVALID_REQUEST, f"Host '{host}' is not allowed here; add it to ALLOWED_HOSTS.", status=403)

    def headers_check(self) -> None:
        """Refuse a request that repeats a header this gateway reads one value of (400).

        ``self.headers`` keeps the last of each, but a proxy in front may have acted on the
        first: two session ids, versions, hosts or origins are ambiguous, never resolved.
        (Two Authorization headers are refused as a 401, in ``authenticate``.)
        """
        seen: set[bytes] = set()
        for name, _ in self.scope["headers"]:
            if name in SINGLE_VALUED_HEADERS:
                if name in seen:
                    raise RpcError(
                        INVALID_REQUEST,
                        f"Bad Request: the request carries more than one {name.decode()} header; send exactly one.",
                        data={"type": "invalid_request_error", "code": "duplicate_header"},
                        status=400,
                    )
                seen.add(name)

    async def authenticate(self) -> KeyContext:
        self.host_check()
        self.origin_check()
        # The raw headers, not self.headers: a dict keeps the last of two, billing whoever sent it.
        key = await key_authenticate_request(self.scope["headers"], ip=self.client_ip, endpoint="mcp")
        key.require_scope("mcp")
        return key

    async def bundle_check(self) -> str:
        bundle = str(self.scope.get("url_route", {}).get("kwargs", {}).get("bundle") or "")
        if bundle and bundle not in (await catalog_cache.get()).bundles:
            raise RpcError(INVALID_REQUEST, f"No virtual server named '{bundle}'.", status=404)
        return bundle

    async def session_find(self, session_id: str | None, key: KeyContext) -> McpSession:
        if not session_id:
            raise RpcError(INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required.", status=400)
        session = await session_store().touch(session_id)
        # Another key's session is reported as unknown, so ids cannot be probed across tenants.
        if session is None or session.key_id != key.key_id:
            raise RpcError(-32001, "Session not found (unknown or expired); initialize a new one.", status=404)
        return session

    def accept_check(self, *required: str) -> None:
        accept = (self.header(b"accept") or "").lower()
        if "*/*" in accept:
            return
        missing = [kind for kind in required if kind not in accept]
        if missing:
            raise RpcError(
                INVALID_REQUEST, f"Not Acceptable: the Accept header must list {' and '.join(required)}.", status=406
            )

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if self.stream is not None:
            await self.stream.close()
        raise StopConsumer()
