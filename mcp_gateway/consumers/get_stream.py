"""Streamable HTTP's GET: a session's own SSE stream (list changes, heartbeats), resumable with Last-Event-ID.

A ``Last-Event-ID`` naming a request's stream (one a POST answered with SSE) resumes that
stream instead, until the request's response, wherever the request runs.
"""

from __future__ import annotations

import contextlib

from mcp_gateway.consumers.base import McpConsumer
from mcp_gateway.events import event_id_parse, event_log
from mcp_gateway.handshake import MODERN_VERSIONS
from mcp_gateway.jsonrpc import INVALID_REQUEST, RpcError
from mcp_gateway.streams import SseStream
from tenants.auth import KeyContext


class SessionStreamConsumer(McpConsumer):
    """The GET half of Streamable HTTP (``StreamableHttpConsumer`` adds POST and DELETE)."""

    async def open_stream(self, key: KeyContext) -> bool:
        """Open the session's stream, or resume the one its ``Last-Event-ID`` names; True: it stays open."""
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
        after = None
        if resumed is None or info is None or info.session_id != session.id:
            # Unknown, expired or another session's stream: nothing to replay, a fresh stream.
            self.stream = SseStream(self, session, log=log, prime=session.version >= "2025-11-25")
        else:
            stream_id, after = resumed
            self.stream = SseStream(self, session, log=log, stream_id=stream_id)
            if info.kind == "post":  # a request's stream: its events until its response, no list changes
                await self.stream.open(resume_after=after, follow=True)
                return True
        await self.stream.watch(key, session.bundle)
        await self.stream.open(resume_after=after)
        await self.stream.go_live()
        return True
