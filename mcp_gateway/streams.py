"""The MCP transports' server-to-client SSE: a request's answer as a stream, and the long-lived streams.

A request's stream (``ResponseStream``) carries its progress, then its response; a long-lived
stream (``SseStream``: Streamable HTTP's GET, ``subscriptions/listen``, the legacy transport's
stream) carries heartbeats and list changes. With an event log, both can be resumed with
``Last-Event-ID`` on any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from core.cancellation import raise_if_cancel_requested
from mcp_gateway.catalog_watch import Watcher, catalog_watch, list_changed
from mcp_gateway.events import LocalEventLog, RedisEventLog, StreamInfo, event_id
from mcp_gateway.jsonrpc import INVALID_REQUEST, Message, RpcError
from mcp_gateway.sessions import McpSession, session_id_new, session_store
from observability import metrics
from tenants.auth import KeyContext

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def sse_frame(data: str, event_id_value: str | None = None) -> bytes:
    head = f"id: {event_id_value}\n" if event_id_value else ""
    return f"{head}event: message\ndata: {data}\n\n".encode()


def message_dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def sse_accepted(accept: str | None) -> bool:
    """Whether an Accept header admits ``text/event-stream`` (listed, or ``*/*``, and not with q=0)."""
    for part in (accept or "").lower().split(","):
        kind, *params = (piece.strip() for piece in part.split(";"))
        if kind in ("text/event-stream", "text/*", "*/*"):
            if any(param.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for param in params):
                continue
            return True
    return False


def progress_token(params: dict[str, Any]) -> Any:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, (str, int)) and not isinstance(token, bool) else None


def call_progress_token(message: Message) -> Any:
    """The progress token of a tools/call that asked for progress (the one method whose progress is relayed)."""
    return progress_token(message.params) if message.method == "tools/call" else None


def progress_relay(
    token: str | int, send: Callable[[dict[str, Any]], Awaitable[Any]]
) -> Callable[[float, float | None, str | None], Awaitable[None]]:
    """The progress callback of a tools/call: each upstream progress report, under the client's
    token, handed to ``send`` as a ``notifications/progress`` message.

    It runs inside the upstream link's receive loop, which must survive a failed send, so a
    failure is logged, never raised.
    """

    async def progress(value: float, total: float | None, text: str | None) -> None:
        params: dict[str, Any] = {"progressToken": token, "progress": value}
        if total is not None:
            params["total"] = total
        if text is not None:
            params["message"] = text
        try:
            await send({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
        except Exception:
            logger.exception("MCP progress relay failed")

    return progress


class ResponseStream:
    """One request's answer as SSE: related notifications, then the response, which ends the stream.

    With a log, every event gets an id and is kept, so the client can resume the stream
    with a GET and ``Last-Event-ID`` on any process; ``prime`` sends an id-only event first
    (2025-11-25), so even a connection lost before the first notification can be resumed.
    While the call runs, a comment line goes out every ``MCP_SSE_HEARTBEAT`` seconds, so a
    proxy does not cut a long, quiet tool call as an idle connection.
    """

    def __init__(
        self, consumer: Any, *, session_id: str, log: LocalEventLog | RedisEventLog | None, prime: bool
    ) -> None:
        self.consumer = consumer
        self.session_id = session_id
        self.log = log
        self.prime = prime
        self.stream_id = session_id_new()
        self.gone = False
        self.ended = False
        self._sending = asyncio.Lock()  # a heartbeat never lands between, or after, the answer's frames
        self._heartbeat: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.consumer.send_headers(status=200, headers=SSE_HEADERS)
        self._heartbeat = asyncio.ensure_future(self._beat())
        if self.log is None:
            return
        try:
            entry = await self.log.open(self.stream_id, StreamInfo(self.session_id, "post"))
        except Exception as exc:  # Redis briefly away: answer anyway, just not resumably
            logger.warning("MCP event log unavailable, stream not resumable: %s", exc)
            self.log = None
            return
        if self.prime:
            await self.consumer.send_body(sse_frame("", event_id(self.stream_id, entry)), more_body=True)

    async def send(self, message: dict[str, Any] | str, *, final: bool = False) -> None:
        """Send a message (or its JSON); ``final`` (the response) ends the stream."""
        data = message if isinstance(message, str) else message_dump(message)
        ident = None
        if self.log is not None:
            try:
                ident = event_id(self.stream_id, await self.log.append(self.stream_id, data, final=final))
            except Exception as exc:
                logger.warning("MCP event log append failed: %s", exc)
        if final:
            self.close()
        async with self._sending:
            if self.gone or self.ended:
                return
            self.ended = final
            try:
                await self.consumer.send_body(sse_frame(data, ident), more_body=not final)
            except Exception as exc:  # the client went away: the request goes on, its events stay in the log
                logger.info("MCP response stream %s lost its client: %s", self.stream_id[:8], exc)
                self.gone = True

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(settings.MCP_SSE_HEARTBEAT)
            async with self._sending:
                if self.gone or self.ended:
                    return
                try:
                    await self.consumer.send_body(b": ping\n\n", more_body=True)
                except Exception:  # the client went away; the answer's own send notices and logs it
                    self.gone = True
                    return

    def close(self) -> None:
        """Stop the heartbeat: at the final message, or when the request ends without one."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None


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
                raise_if_cancel_requested(exc)
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
                raise_if_cancel_requested(exc)
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
