"""Streamable HTTP (``/mcp``, ``/mcp/<bundle>``): POSTed requests and DELETE; the GET stream is in get_stream.

POST answers with JSON or a request's SSE stream, under the initialize handshake (a session
per client) or stateless (2026-07-28: version and capabilities in each request, and
``subscriptions/listen`` for list changes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from django.conf import settings
from mcp.shared.inbound import decode_header_value

from mcp_gateway.call_audit import CallContext
from mcp_gateway.consumers.get_stream import SessionStreamConsumer
from mcp_gateway.events import event_log
from mcp_gateway.handshake import (
    DEFAULT_HEADER_VERSION,
    HANDSHAKE_VERSIONS,
    MODERN_VERSIONS,
    STREAMABLE_HANDSHAKE_VERSIONS,
    discover_result,
    initialize_result,
    modern_meta_check,
)
from mcp_gateway.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_REQUEST,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    RpcError,
    body_parse,
    message_parse,
    response_dump,
    response_encode,
    response_too_large,
    shown,
)
from mcp_gateway.methods import request_handle
from mcp_gateway.sessions import McpSession, session_id_new, session_store
from mcp_gateway.streams import (
    ResponseStream,
    SseStream,
    call_progress_token,
    message_dump,
    progress_relay,
    sse_accepted,
)
from tenants.auth import KeyContext

logger = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (*HANDSHAKE_VERSIONS, *MODERN_VERSIONS)
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LISTEN_FILTER = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class StreamableHttpConsumer(SessionStreamConsumer):
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
        return mode == "sse" or call_progress_token(message) is not None

    async def answer(self, ctx: CallContext, message: Message, *, resumable: bool, prime: bool) -> None:
        """Send a request's response: one JSON body, or an SSE stream carrying the call's progress first."""
        if not self.wants_stream(message):
            await self.reply(200, response_dump(await request_handle(ctx, message)))
            return
        log = event_log() if resumable else None
        stream = ResponseStream(self, session_id=ctx.session_id, log=log, prime=prime)
        await stream.open()
        token = call_progress_token(message)
        if token is not None:
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
