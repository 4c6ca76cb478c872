"""Channels consumers for the MCP transports: Streamable HTTP (handshake and 2026 stateless) and legacy HTTP+SSE."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from mcp.shared.inbound import decode_header_value

from core.errors import PlatformError
from mcp_gateway.events import LocalEventLog, RedisEventLog, StreamInfo, event_id, event_id_parse, event_log
from mcp_gateway.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_REQUEST,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    RpcError,
    body_parse,
    message_parse,
    platform_rpc_error,
    response_dump,
    response_encode,
    response_too_large,
    shown,
)
from mcp_gateway.protocol import (
    DEFAULT_HEADER_VERSION,
    HANDSHAKE_VERSIONS,
    LEGACY_VERSION,
    MODERN_VERSIONS,
    STREAMABLE_HANDSHAKE_VERSIONS,
    CallContext,
    discover_result,
    initialize_result,
    modern_meta_check,
    request_handle,
)
from mcp_gateway.relay import relay, reply_send
from mcp_gateway.selectors import catalog_cache
from mcp_gateway.sessions import McpSession, session_id_new, session_store
from mcp_gateway.streams import (
    SSE_HEADERS,
    ResponseStream,
    Watcher,
    catalog_watch,
    list_changed,
    message_dump,
    progress_relay,
    progress_token,
    sse_accepted,
    sse_frame,
)
from observability import metrics, telemetry
from tenants.auth import KeyContext, key_authenticate_request

logger = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]
SUPPORTED_VERSIONS = (*HANDSHAKE_VERSIONS, *MODERN_VERSIONS)
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LISTEN_FILTER = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
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


class McpConsumer(AsyncHttpConsumer):
    """Shared plumbing: body size limit, Origin check, API-key auth, JSON-RPC error responses."""

    # No channel layer per consumer: legacy-SSE replies go through one mailbox per process (relay).
    channel_layer_alias = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.size = 0
        self.too_large = False
        self.headers: dict[bytes, bytes] = {}
        self.status = 0  # of the response, once its headers are sent

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Skip Channels' per-message close_old_connections thread hop: no ORM on the event loop here.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    @property
    def client_ip(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def http_request(self, message: dict[str, Any]) -> None:
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > settings.MAX_REQUEST_BYTES:
            self.too_large = True
        elif chunk:
            self.body.append(chunk)
        if message.get("more_body"):
            return
        self.headers = dict(self.scope["headers"])
        # A POST is one traced request (continuing the caller's traceparent); a GET stream may
        # stay open for hours and is not a span.
        trace = telemetry.server_span(self.route(), "POST", self.headers) if self.scope["method"] == "POST" else None
        keep_open = False
        try:
            self.headers_check()
            keep_open = await self.serve(b"".join(self.body))
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
        stream = getattr(self, "stream", None)
        if stream is not None:  # a stream that failed to open, or failed once open, ends here
            await stream.close()
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


class StreamableHttpConsumer(McpConsumer):
    """``/mcp`` and ``/mcp/<bundle>``: Streamable HTTP, with the initialize handshake or stateless (2026-07-28)."""

    async def serve(self, body: bytes) -> bool:
        method = self.scope["method"]
        key = await self.authenticate()
        bundle = await self.bundle_check()
        if method == "POST":
            return await self.post(body, key, bundle)
        if method == "GET":
            return await self.open_stream(key)
        if method == "DELETE":
            if self.header(b"mcp-protocol-version") in MODERN_VERSIONS:
                raise RpcError(INVALID_REQUEST, "Stateless MCP has no sessions to end.", status=405)
            session = await self.session_find(self.header(b"mcp-session-id"), key)
            await session_store().delete(session.id)
            await self.reply(200)
            return False
        raise RpcError(INVALID_REQUEST, f"Method {method} is not allowed here.", status=405)

    def accept_check(self, *required: str) -> None:
        accept = (self.header(b"accept") or "").lower()
        if "*/*" in accept:
            return
        missing = [kind for kind in required if kind not in accept]
        if missing:
            raise RpcError(
                INVALID_REQUEST, f"Not Acceptable: the Accept header must list {' and '.join(required)}.", status=406
            )

    async def post(self, body: bytes, key: KeyContext, bundle: str) -> bool:
        self.accept_check("application/json", "text/event-stream")
        content_type = (self.header(b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RpcError(INVALID_REQUEST, "Unsupported Media Type: send application/json.", status=415)
        if self.too_large:
            raise RpcError(INVALID_REQUEST, f"The body exceeds {settings.MAX_REQUEST_BYTES} bytes.", status=413)
        payload = body_parse(body)
        header_version = self.header(b"mcp-protocol-version")
        if header_version is not None and header_version not in SUPPORTED_VERSIONS:
            raise RpcError(
                UNSUPPORTED_PROTOCOL_VERSION,
                f"Bad Request: unsupported MCP-Protocol-Version '{header_version}'.",
                data={"supported": list(SUPPORTED_VERSIONS[1:]), "requested": header_version},
                status=400,
            )
        if header_version in MODERN_VERSIONS:
            return await self.post_modern(payload, header_version, key, bundle)
        if isinstance(payload, list):
            await self.post_batch(payload, header_version, key, bundle)
            return False
        message = message_parse(payload)
        if message.method == "initialize":
            await self.initialize(message, key, bundle)
            return False
        session = await self.session_find(self.header(b"mcp-session-id"), key)
        version = header_version or DEFAULT_HEADER_VERSION
        if header_version is not None and header_version != session.version:
            raise RpcError(
                INVALID_REQUEST,
                f"Bad Request: MCP-Protocol-Version '{header_version}' differs from the session's '{session.version}'.",
                status=400,
            )
        if session.bundle != bundle:
            raise RpcError(-32001, "Session not found on this endpoint.", status=404)
        ctx = CallContext(key, session.version or version, bundle, self.client_ip, session.id, "streamable_http")
        if not message.is_request:
            await self.reply(202)
            return False
        # Resumable (ids, history) in every handshake version; the id-only priming event is 2025-11-25's.
        await self.answer(ctx, message, resumable=True, prime=session.version >= "2025-11-25")
        return False

    def wants_stream(self, message: Message) -> bool:
        """Answer as SSE? ``MCP_POST_RESPONSE``: json, sse, or auto (when progress is to be relayed)."""
        mode = settings.MCP_POST_RESPONSE
        if mode == "json" or not sse_accepted(self.header(b"accept")):
            return False
        return mode == "sse" or (message.method == "tools/call" and progress_token(message.params) is not None)

    async def answer(self, ctx: CallContext, message: Message, *, resumable: bool, prime: bool) -> None:
        """Send a request's response: one JSON body, or an SSE stream carrying the call's progress first."""
        if not self.wants_stream(message):
            await self.reply(200, response_dump(await request_handle(ctx, message)))
            return
        log = event_log() if resumable else None
        stream = ResponseStream(self, session_id=ctx.session_id, log=log, prime=prime)
        await stream.open()
        token = progress_token(message.params)
        if token is not None and message.method == "tools/call":
            ctx = dataclasses.replace(ctx, progress=progress_relay(token, stream.send))
        try:
            try:
                response = await request_handle(ctx, message)
            except Exception:  # the headers are sent: the failure must be the stream's last event
                logger.exception("MCP request failed")
                response = RpcError(-32603, "Internal error.").response(message.id)
            await stream.send(response_dump(response).decode(), final=True)
        finally:
            stream.close()

    async def post_batch(self, payload: list[Any], header_version: str | None, key: KeyContext, bundle: str) -> None:
        """A 2025-03-26 batch: its messages in order, the answer within ``MCP_MAX_RESPONSE_BYTES``.

        Once an item's answer would pass the budget it is replaced by a -32003 error, and the
        items after it are answered with that error without being run. The loop is yielded
        to between items, so other requests go on meanwhile.
        """
        session = await self.session_find(self.header(b"mcp-session-id"), key)
        if session.version != "2025-03-26" or not payload:
            raise RpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are only allowed in 2025-03-26.")
        if len(payload) > settings.MCP_MAX_BATCH:  # body_parse refuses these first; a guard all the same
            limit = settings.MCP_MAX_BATCH
            raise RpcError(INVALID_REQUEST, f"Invalid Request: a batch holds at most {limit} messages.")
        ctx = CallContext(key, session.version, bundle, self.client_ip, session.id, "streamable_http")
        budget = settings.MCP_MAX_RESPONSE_BYTES - 2  # the brackets
        spent, exhausted = 0, False
        parts: list[bytes] = []
        for item in payload:
            await asyncio.sleep(0)
            try:
                message = message_parse(item)
            except RpcError as exc:
                response = exc.response(item.get("id") if isinstance(item, dict) else None)
            else:
                if not message.is_request:
                    continue
                if exhausted:
                    response = response_too_large(message.id)
                elif message.method == "initialize":
                    response = RpcError(INVALID_REQUEST, "initialize cannot be batched.").response(message.id)
                else:
                    response = await request_handle(ctx, message)
            encoded = response_encode(response)
            if spent + len(parts) + len(encoded) > budget:  # len(parts): the commas
                encoded, exhausted = response_encode(response_too_large(response.get("id"))), True
            spent += len(encoded)
            parts.append(encoded)
        if parts:
            await self.reply(200, b"[" + b",".join(parts) + b"]")
        else:
            await self.reply(202)

    async def initialize(self, message: Message, key: KeyContext, bundle: str) -> None:
        if not message.is_request:
            raise RpcError(INVALID_REQUEST, "Invalid Request: initialize must be a request with an id.")
        result = initialize_result(message.params, STREAMABLE_HANDSHAKE_VERSIONS)
        session = McpSession(
            id=session_id_new(),
            key_id=key.key_id,
            tenant_id=key.tenant_id,
            version=result["protocolVersion"],
            transport="streamable_http",
            bundle=bundle,
        )
        await session_store().save(session)
        response = {"jsonrpc": "2.0", "id": message.id, "result": result}
        await self.reply(200, response, [(b"mcp-session-id", session.id.encode())])

    async def post_modern(self, payload: Any, version: str, key: KeyContext, bundle: str) -> bool:
        if isinstance(payload, list):
            raise RpcError(INVALID_REQUEST, "Invalid Request: batches are not part of 2026-07-28.", status=400)
        message = message_parse(payload)
        if message.method is None:
            await self.reply(202)  # a response to a server request: nothing to answer
            return False
        header_method = self.header(b"mcp-method")
        if header_method != message.method:
            raise RpcError(
                HEADER_MISMATCH,
                f"Mcp-Method header '{shown(header_method)}' does not match the body's method "
                f"'{shown(message.method)}'.",
                status=400,
            )
        name_param = NAME_PARAM.get(message.method)
        if name_param is not None:
            # A name that is not plain printable ASCII travels base64-wrapped (=?base64?…?=), as the SDK sends it.
            header_name = decode_header_value(self.header(b"mcp-name"))
            if header_name != message.params.get(name_param):
                raise RpcError(
                    HEADER_MISMATCH,
                    f"Mcp-Name header '{shown(self.header(b'mcp-name'))}' does not match the body's {name_param} "
                    f"'{shown(message.params.get(name_param))}'.",
                    status=400,
                )
        if message.method == "initialize":
            raise RpcError(-32601, "initialize is not part of 2026-07-28; use server/discover.", status=400)
        if not message.is_request:
            await self.reply(202)
            return False
        try:
            modern_meta_check(message, version)
        except RpcError as exc:
            await self.reply(exc.status, exc.response(message.id))
            return False
        if message.method == "server/discover":
            await self.reply(200, {"jsonrpc": "2.0", "id": message.id, "result": discover_result()})
            return False
        if message.method == "subscriptions/listen":
            await self.listen(message, version, key, bundle)
            return True
        ctx = CallContext(key, version, bundle, self.client_ip, "", "streamable_http")
        # 2026-07-28 has no Last-Event-ID resumption: its streams carry no ids.
        await self.answer(ctx, message, resumable=False, prime=False)
        return False

    async def listen(self, message: Message, version: str, key: KeyContext, bundle: str) -> None:
        """``subscriptions/listen``: acknowledge the honoured filter, then send list_changed on catalogue changes."""
        if not sse_accepted(self.header(b"accept")):
            raise RpcError(
                INVALID_REQUEST, "Not Acceptable: subscriptions/listen answers with text/event-stream.", status=406
            )
        requested = message.params.get("notifications")
        if requested is not None and not isinstance(requested, dict):
            raise RpcError(-32602, "Invalid params: 'notifications' must be an object.", status=400)
        honoured = {name: True for name in LISTEN_FILTER if (requested or {}).get(name) is True}
        meta = {SUBSCRIPTION_ID: message.id}
        session = McpSession("", key.key_id, key.tenant_id, version, "streamable_http", bundle)
        self.stream = SseStream(self, session)
        kinds = frozenset(LISTEN_FILTER[name] for name in honoured)
        if kinds:
            await self.stream.watch(key, bundle, kinds, meta)
        await self.stream.open()
        ack = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"_meta": meta, "notifications": honoured},
        }
        await self.stream.send_message(message_dump(ack))
        await self.stream.go_live()

    async def open_stream(self, key: KeyContext) -> bool:
        if self.header(b"mcp-protocol-version") in MODERN_VERSIONS:
            raise RpcError(INVALID_REQUEST, "Stateless MCP has no GET stream; use subscriptions/listen.", status=405)
        self.accept_check("text/event-stream")
        session = await self.session_find(self.header(b"mcp-session-id"), key)
        log = event_log()
        resumed = event_id_parse(self.header(b"last-event-id"))
        info = None
        if resumed is not None:
            with contextlib.suppress(Exception):
                info = await log.info(resumed[0])
        if resumed is None or info is None or info.session_id != session.id:
            # Unknown, expired or another session's stream: nothing to replay, a fresh stream.
            self.stream = SseStream(self, session, log=log, prime=session.version >= "2025-11-25")
            await self.stream.watch(key, session.bundle)
            await self.stream.open()
            await self.stream.go_live()
            return True
        stream_id, after = resumed
        self.stream = SseStream(self, session, log=log, stream_id=stream_id)
        if info.kind == "post":
            await self.stream.open(resume_after=after, follow=True)
        else:
            await self.stream.watch(key, session.bundle)
            await self.stream.open(resume_after=after)
            await self.stream.go_live()
        return True

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            await stream.close()
        raise StopConsumer()


class SseStream:
    """An open server-to-client event stream: heartbeats, idle timeout, per-tenant limit.

    With an event log (Streamable HTTP's GET stream) every message gets an id and is kept,
    so the client can resume after a lost connection with ``Last-Event-ID``, on any process.
    """

    def __init__(
        self,
        consumer: AsyncHttpConsumer,
        session: McpSession,
        *,
        endpoint: str = "",
        log: LocalEventLog | RedisEventLog | None = None,
        stream_id: str = "",
        prime: bool = False,
    ) -> None:
        self.consumer = consumer
        self.session = session
        self.endpoint = endpoint
        self.task: asyncio.Task[None] | None = None
        self.counted = False
        self.closed = False
        self.lease_id = session_id_new()  # this connection's place in the tenant's open-stream count
        self.log = log
        self.stream_id = stream_id or session_id_new()
        self.prime = prime
        self.watcher: Watcher | None = None
        # A stream watches the catalogue from before it opens (so no change made while it opens
        # is missed) but tells the client only once it is open: until then changes wait here.
        self.live = False
        self._held: list[str] = []

    async def open(self, *, resume_after: str | None = None, follow: bool = False) -> None:
        """Start the response; with ``resume_after``, first replay the stream's events after that entry.

        ``follow`` (a request's stream resumed elsewhere) goes on reading the log until the
        request's response arrives, instead of waiting for messages of this process.
        """
        if not await session_store().stream_open(self.session.tenant_id, self.lease_id):
            raise RpcError(
                INVALID_REQUEST,
                f"Too many open MCP streams for this tenant (limit {settings.MCP_MAX_STREAMS_PER_TENANT}).",
                status=429,
            )
        self.counted = True
        metrics.mcp_session_opened()
        await self.consumer.send_headers(status=200, headers=SSE_HEADERS)
        first = f"event: endpoint\ndata: {self.endpoint}\n\n".encode() if self.endpoint else b": stream open\n\n"
        await self.consumer.send_body(first, more_body=True)
        if resume_after is not None and self.log is not None:
            after = await self._replay(resume_after)
            if self.closed:
                return
            if follow:
                self.task = asyncio.ensure_future(self._follow(after))
                return
        elif self.log is not None:
            try:
                entry = await self.log.open(self.stream_id, StreamInfo(self.session.id, "get"))
                if self.prime:
                    await self.consumer.send_body(sse_frame("", event_id(self.stream_id, entry)), more_body=True)
            except Exception as exc:  # Redis briefly away: a stream all the same, just not resumable
                logger.warning("MCP event log unavailable, stream not resumable: %s", exc)
                self.log = None
        self.task = asyncio.ensure_future(self._heartbeat())

    async def _replay(self, after: str, *, wait: float = 0) -> str:
        """Send the logged events after ``after``; end the response at a request's final one."""
        assert self.log is not None
        for event in await self.log.read(self.stream_id, after, wait=wait):
            after = event.entry
            if event.data:
                await self.consumer.send_body(
                    sse_frame(event.data, event_id(self.stream_id, event.entry)), more_body=not event.final
                )
            if event.final:
                await self.close()
                break
        return after

    async def _follow(self, after: str) -> None:
        # The request runs on whichever process received it; its events reach the log, read here.
        while not self.closed:
            try:
                position = await self._replay(after, wait=settings.MCP_SSE_HEARTBEAT)
                if self.closed:
                    return
                if position == after and not await self._beat():
                    return
                after = position
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("MCP resumed stream %s failed: %s", self.stream_id[:8], exc)
                await asyncio.sleep(settings.MCP_SSE_HEARTBEAT)

    async def _beat(self) -> bool:
        """One heartbeat; False once the session is gone (and the stream ended)."""
        store = session_store()
        # A stateless stream (subscriptions/listen) has no session to keep alive.
        if self.session.id and await store.touch(self.session.id) is None:
            await self.consumer.send_body(b"", more_body=False)
            await self.close()
            return False
        await store.stream_touch(self.session.tenant_id, self.lease_id)
        await self.consumer.send_body(b": ping\n\n", more_body=True)
        return True

    async def _heartbeat(self) -> None:
        # A comment line keeps proxies from cutting an idle stream; the session lookup both
        # keeps the session alive while its stream is open and ends the stream once the
        # session was deleted (DELETE, expiry) by any process.
        while True:
            await asyncio.sleep(settings.MCP_SSE_HEARTBEAT)
            try:
                if not await self._beat():
                    return
            except Exception as exc:  # Redis briefly away: keep the stream, try again next beat
                logger.warning("MCP stream %s heartbeat failed: %s", self.session.id[:8], exc)

    async def send_message(self, payload: str) -> None:
        if self.closed:
            return
        ident = None
        if self.log is not None:
            try:
                ident = event_id(self.stream_id, await self.log.append(self.stream_id, payload))
            except Exception as exc:
                logger.warning("MCP event log append failed: %s", exc)
        await self.consumer.send_body(sse_frame(payload, ident), more_body=True)

    async def watch(
        self, key: KeyContext, bundle: str, kinds: frozenset[str] | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Send ``notifications/<kind>/list_changed`` whenever a list this key sees changes."""

        async def deliver(changed: list[str]) -> None:
            if not self.live:
                self._held.extend(kind for kind in changed if kind not in self._held)
                return
            for kind in changed:
                await self.send_message(message_dump(list_changed(kind, meta)))

        self.watcher = Watcher(key, bundle, deliver)
        if kinds is not None:
            self.watcher.kinds = kinds
        await catalog_watch.add(self.watcher)

    async def go_live(self) -> None:
        """The stream is open: send the list changes held while it opened, and from now on as they come."""
        if self.closed or self.live:
            return
        self.live = True
        held, self._held = self._held, []
        if held and self.watcher is not None:
            await self.watcher.deliver(held)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.watcher is not None:
            catalog_watch.remove(self.watcher)
        current = asyncio.current_task()
        if self.task is not None and self.task is not current:
            self.task.cancel()
        if self.counted:
            metrics.mcp_session_closed()
            with contextlib.suppress(Exception):
                await session_store().stream_close(self.session.tenant_id, self.lease_id)


class LegacySseConsumer(McpConsumer):
    """``GET /mcp/sse`` (and ``/mcp/<bundle>/sse``): the 2024-11-05 transport's event stream."""

    async def serve(self, body: bytes) -> bool:
        if self.scope["method"] != "GET":
            raise RpcError(
                INVALID_REQUEST, "Use GET to open the SSE stream; POST to the endpoint it sends.", status=405
            )
        key = await self.authenticate()
        bundle = await self.bundle_check()
        session_id = session_id_new()
        self.stream = SseStream(self, McpSession(session_id, key.key_id, key.tenant_id, LEGACY_VERSION, "sse", bundle))
        channel = await relay.register(session_id, self.stream)
        session = McpSession(session_id, key.key_id, key.tenant_id, LEGACY_VERSION, "sse", bundle, channel)
        self.stream.session = session
        self.stream.endpoint = f"{self.scope.get('root_path', '')}/mcp/messages?session_id={session_id}"
        await session_store().save(session)
        try:
            await self.stream.watch(key, bundle)
            await self.stream.open()
        except Exception:
            relay.unregister(session_id)
            await session_store().delete(session_id)
            raise
        await self.stream.go_live()
        return True

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            relay.unregister(stream.session.id)
            await stream.close()
            with contextlib.suppress(Exception):
                await session_store().delete(stream.session.id)
        raise StopConsumer()


class LegacyMessagesConsumer(McpConsumer):
    """``POST /mcp/messages?session_id=…``: 202 at once; the reply goes to the session's stream, wherever it is."""

    async def serve(self, body: bytes) -> bool:
        if self.scope["method"] != "POST":
            raise RpcError(INVALID_REQUEST, "Use POST for the messages endpoint.", status=405)
        key = await self.authenticate()
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        session_id = (query.get("session_id") or [""])[0]
        if not session_id:
            raise RpcError(INVALID_REQUEST, "Bad Request: session_id is required.", status=400)
        session = await session_store().touch(session_id)
        if session is None or session.key_id != key.key_id or session.transport != "sse":
            raise RpcError(-32001, "Session not found (unknown or expired); open a new SSE stream.", status=404)
        if self.too_large:
            raise RpcError(INVALID_REQUEST, f"The body exceeds {settings.MAX_REQUEST_BYTES} bytes.", status=413)
        message = message_parse(body_parse(body))
        await self.reply(202, None)
        if message.is_request:
            if message.method == "initialize":
                try:
                    result = initialize_result(message.params, HANDSHAKE_VERSIONS)
                    response: dict[str, Any] = {"jsonrpc": "2.0", "id": message.id, "result": result}
                except RpcError as exc:
                    response = exc.response(message.id)
            else:
                ctx = CallContext(key, session.version, session.bundle, self.client_ip, session.id, "sse")
                token = progress_token(message.params)
                if token is not None and message.method == "tools/call":
                    ctx = dataclasses.replace(ctx, progress=self._progress_relay(session, token))
                try:
                    response = await request_handle(ctx, message)
                except Exception:  # the 202 is sent: the failure must reach the stream, not a second response
                    logger.exception("MCP request on session %s failed", session.id[:8])
                    response = RpcError(-32603, "Internal error.").response(message.id)
            payload = response_dump(response).decode()
            try:
                await reply_send(session.stream_channel, session.id, payload)
            except Exception:  # the 202 is sent; the client will time out waiting for this reply
                logger.exception("MCP reply for session %s could not be delivered", session.id[:8])
        return False

    @staticmethod
    def _progress_relay(session: McpSession, token: str | int) -> Any:
        """A tools/call's upstream progress, sent ahead of its reply on the session's stream."""

        async def send(note: dict[str, Any]) -> None:
            await reply_send(session.stream_channel, session.id, message_dump(note))

        return progress_relay(token, send)
