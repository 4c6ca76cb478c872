"""The legacy HTTP+SSE transport (2024-11-05): ``GET /mcp/sse`` opens the stream, ``POST /mcp/messages`` feeds it.

A message may reach any process; its reply goes to the process holding the session's
stream through that process's mailbox (``relay``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from django.conf import settings

from mcp_gateway.call_audit import CallContext
from mcp_gateway.consumers.base import McpConsumer
from mcp_gateway.handshake import HANDSHAKE_VERSIONS, LEGACY_VERSION, initialize_result
from mcp_gateway.jsonrpc import INVALID_REQUEST, RpcError, body_parse, message_parse, response_dump
from mcp_gateway.methods import request_handle
from mcp_gateway.relay import relay, reply_send
from mcp_gateway.sessions import McpSession, session_id_new, session_store
from mcp_gateway.streams import SseStream, call_progress_token, message_dump, progress_relay

logger = logging.getLogger(__name__)


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
        if self.stream is not None:
            relay.unregister(self.stream.session.id)
            await self.stream.close()
            with contextlib.suppress(Exception):
                await session_store().delete(self.stream.session.id)
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
                token = call_progress_token(message)
                if token is not None:
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
