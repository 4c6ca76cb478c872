"""Delivers replies to legacy-SSE streams: one channel-layer mailbox per process, not one per stream.

The POST of a legacy client may land on any process; the session record names the
mailbox of the process that holds the stream, and the reply is sent there through the
channel layer (Redis across processes). One receive loop per process then hands it to
the stream, so thousands of idle streams cost no Redis connection or poll each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from channels.layers import get_channel_layer

from core import registry
from core.cancellation import raise_if_cancel_requested

logger = logging.getLogger(__name__)


class ReplySink(Protocol):
    async def send_message(self, payload: str) -> None: ...


class StreamRelay:
    def __init__(self) -> None:
        self.streams: dict[str, ReplySink] = {}
        self.channel: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def register(self, session_id: str, stream: ReplySink) -> str:
        """Route replies for ``session_id`` to ``stream``; return this process's mailbox name."""
        async with self._lock:
            if self.channel is None or self._task is None or self._task.done():
                layer = get_channel_layer()
                self.channel = await layer.new_channel("mcp-relay.")
                self._task = asyncio.ensure_future(self._receive(layer, self.channel))
        self.streams[session_id] = stream
        return self.channel

    def unregister(self, session_id: str) -> None:
        self.streams.pop(session_id, None)

    def forget(self) -> None:
        """Drop the mailbox and its reader, as a fresh process has none (the reader's loop may be gone)."""
        self.streams.clear()
        self.channel = None
        self._task = None
        self._lock = asyncio.Lock()

    async def _receive(self, layer: Any, channel: str) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis briefly away: keep the mailbox, retry shortly
                raise_if_cancel_requested(exc)
                logger.warning("MCP relay receive failed: %s", exc)
                await asyncio.sleep(1)
                continue
            stream = self.streams.get(message.get("session", ""))
            if stream is None:
                continue  # the stream closed meanwhile; its client is gone
            try:
                await stream.send_message(message["payload"])
            except Exception as exc:
                logger.warning("MCP relay could not write to stream: %s", exc)


relay = StreamRelay()
registry.register("mcp.relay", reset=relay.forget)


async def reply_send(channel: str, session_id: str, payload: str) -> None:
    """Send a reply to the process that holds the session's stream."""
    await get_channel_layer().send(channel, {"type": "mcp.message", "session": session_id, "payload": payload})
