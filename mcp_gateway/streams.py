"""Server-to-client SSE of Streamable HTTP: request streams with event ids; list_changed on catalogue changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.epoch import SharedEpoch
from mcp_gateway.events import LocalEventLog, RedisEventLog, StreamInfo, event_id
from mcp_gateway.selectors import Catalog, catalog_cache
from mcp_gateway.sessions import session_id_new
from tenants.auth import KeyContext

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
LIST_KINDS = ("tools", "prompts", "resources")


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


def catalog_view(catalog: Catalog, key: KeyContext, bundle: str) -> dict[str, str]:
    """A digest per list (tools, prompts, resources) of what this key sees on this endpoint."""
    tools = [entry.spec for entry in catalog.visible_tools(key, bundle or None)]
    prompts = [] if bundle else catalog.visible_prompts(key)
    resources = [] if bundle else catalog.visible_resources(key)
    return {
        kind: hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
        for kind, items in zip(LIST_KINDS, (tools, prompts, resources), strict=True)
    }


@dataclass(eq=False)
class Watcher:
    """One open stream that wants to hear when the lists its key sees change."""

    key: KeyContext
    bundle: str
    deliver: Callable[[list[str]], Awaitable[None]]  # called with the kinds that changed
    kinds: frozenset[str] = frozenset(LIST_KINDS)
    seen: dict[str, str] = field(default_factory=dict)


class CatalogWatch:
    """This process's streams waiting for catalogue changes, served by one task that polls the shared epoch.

    A change anywhere (an admin refresh, a grant, an upstream's own list_changed) bumps the
    catalogue's epoch; each stream is then told only about the lists that changed for its
    key, so one tenant's grants are no signal to another tenant.
    """

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.epoch = SharedEpoch("mcp-catalog")
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._adding = 0  # streams between "the poller runs" and "in the watch list"

    async def add(self, watcher: Watcher) -> None:
        self._adding += 1
        try:
            task = self._task
            if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
                self._started = asyncio.Event()
                self._task = asyncio.ensure_future(self._run(self._started))
            # The view is read only after the poller noted the epoch, so a change made meanwhile
            # (even one made while this stream opened) is either in the view or still to come.
            await self._started.wait()
            watcher.seen = catalog_view(await catalog_cache.get(), watcher.key, watcher.bundle)
            self.watchers.add(watcher)
        finally:
            self._adding -= 1

    def remove(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    async def _run(self, started: asyncio.Event) -> None:
        try:
            await self.epoch.moved()  # note the current epoch: only later changes count
        finally:
            started.set()
        while self.watchers or self._adding:
            await asyncio.sleep(max(settings.KEY_REVOCATION_POLL, 0.25))
            try:
                if await self.epoch.moved():
                    await self.check()
            except Exception as exc:
                logger.warning("MCP catalogue watch failed: %s", exc)

    async def check(self) -> None:
        """Reload the catalogue and tell each stream which of its lists changed."""
        catalog_cache.clear()
        catalog = await catalog_cache.get()
        for watcher in list(self.watchers):
            view = catalog_view(catalog, watcher.key, watcher.bundle)
            changed = [kind for kind in LIST_KINDS if view[kind] != watcher.seen.get(kind) and kind in watcher.kinds]
            watcher.seen = view
            if changed:
                try:
                    await watcher.deliver(changed)
                except Exception as exc:
                    logger.warning("MCP list_changed delivery failed: %s", exc)


catalog_watch = CatalogWatch()


def list_changed(kind: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}
    if meta:
        message["params"] = {"_meta": meta}
    return message
