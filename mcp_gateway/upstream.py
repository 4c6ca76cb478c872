"""Connections from this process to upstream MCP servers, made with the official ``mcp`` SDK client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx2
from django.conf import settings
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from core import registry
from mcp_gateway import ssrf

logger = logging.getLogger(__name__)

_tasks: set[asyncio.Task[Any]] = set()


class UpstreamUnavailable(Exception):
    """The upstream server cannot be reached or failed at the transport level."""


class UpstreamCallFailed(Exception):
    """One call failed on a link that goes on serving the others (e.g. the upstream's answer was not valid)."""


class UnsendableMessage(ValueError):
    """A message the upstream link's transport could not encode; refused before it reached the transport."""


class _EncodableWriteStream:
    """The transport's write stream, refusing in the sender's task a message the transport could not encode.

    The SDK's transports encode each message in their own writer task, which every request
    on the link shares: an encoding error there (a lone surrogate, bytes that are not
    UTF-8, an object JSON has no form for) ends the whole connection and fails every call
    in flight. Encoding it once here first (pydantic's serializer, ~1.5 µs for a small
    call) fails only the call that sent it.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def send(self, item: SessionMessage, /) -> None:
        try:
            item.message.model_dump_json(by_alias=True, exclude_unset=True)
        except ValueError as exc:  # PydanticSerializationError is one
            raise UnsendableMessage(str(exc)) from None
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _EncodableWriteStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._inner.__aexit__(*exc_info)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def _encodable(transport: Any) -> AsyncIterator[tuple[Any, _EncodableWriteStream]]:
    async with transport as (read, write):
        yield read, _EncodableWriteStream(write)


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """What is needed to connect to one upstream (plain values, no ORM object)."""

    server_id: int
    name: str
    url: str
    transport: str
    headers: tuple[tuple[str, str], ...]
    allowlist: tuple[str, ...]
    revision: str  # changes whenever the server row changes, so the link is rebuilt
    timeout: float
    command: tuple[str, ...] = ()  # stdio: the operator's argv; ``headers`` then become environment variables


LAUNCHER = Path(__file__).with_name("stdio_launch.py")


def stdio_home(name: str) -> Path:
    """The private working and home directory of a stdio upstream (mode 0700)."""
    home = Path(settings.VAR_DIR) / "mcp-stdio" / name
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "tmp").mkdir(mode=0o700, exist_ok=True)
    return home


def stdio_parameters(target: UpstreamTarget) -> StdioServerParameters:
    """How to start a stdio upstream: through the launcher (limits), in its own directory,
    with a minimal environment — the gateway's own variables (database URL, secret key,
    provider keys) are not passed on; only PATH, locale basics and the stored credential."""
    home = stdio_home(target.name)
    env = {"HOME": str(home), "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8", **dict(target.headers)}
    args = [
        "-I",
        str(LAUNCHER),
        "--memory-mb",
        str(settings.MCP_STDIO_MEMORY_MB),
        "--max-files",
        str(settings.MCP_STDIO_MAX_FILES),
        "--",
        *target.command,
    ]
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(home))


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


class UpstreamLink:
    """One long-lived SDK client session to one upstream, shared by every request of this process.

    The SDK's client is an async context manager bound to the task that entered it, so a
    dedicated task holds it open; requests from any task then go through the session.
    """

    def __init__(self, target: UpstreamTarget, on_list_changed: Callable[[int], None] | None = None) -> None:
        self.target = target
        self.client: Client | None = None
        self._ready = asyncio.Event()
        self._close = asyncio.Event()
        self._error: BaseException | None = None
        self._on_list_changed = on_list_changed
        self._errlog: TextIO | None = None
        self._task = asyncio.ensure_future(self._hold())
        _tasks.add(self._task)
        self._task.add_done_callback(_tasks.discard)

    @property
    def alive(self) -> bool:
        return not self._task.done()

    def _transport(self) -> Any:
        return _encodable(self._raw_transport())

    def _raw_transport(self) -> Any:
        # Every connection goes to an address checked at connect time (see ssrf.PinnedBackend).
        headers = dict(self.target.headers)
        if self.target.transport == "stdio":
            if self._errlog is None:  # the child's stderr, kept beside its home for the operator
                log = stdio_home(self.target.name).parent / f"{self.target.name}.stderr.log"
                self._errlog = log.open("a", encoding="utf-8")
            return stdio_client(stdio_parameters(self.target), errlog=self._errlog)
        allowlist = self.target.allowlist
        if self.target.transport == "sse":

            def pinned(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                return ssrf.pinned_client(
                    allowlist, headers=headers, timeout=timeout or httpx2.Timeout(self.target.timeout), auth=auth
                )

            return sse_client(
                self.target.url, headers=headers, timeout=self.target.timeout, httpx_client_factory=pinned
            )
        http = ssrf.pinned_client(
            allowlist,
            headers=headers,
            timeout=httpx2.Timeout(self.target.timeout, read=max(self.target.timeout, 300.0)),
        )
        return streamable_http_client(self.target.url, http_client=http)

    def _modes(self) -> tuple[str, ...]:
        # "auto" finds 2026-07-28 where the upstream speaks it and falls back to the handshake.
        # (A handshake-first link measured slower per call inside daphne; see docs/benchmarks.md.)
        return ("legacy",) if self.target.transport == "sse" else ("auto",)

    async def _message(self, message: Any) -> None:
        method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
        if (
            method
            in (
                "notifications/tools/list_changed",
                "notifications/prompts/list_changed",
                "notifications/resources/list_changed",
            )
            and self._on_list_changed
        ):
            self._on_list_changed(self.target.server_id)

    async def _hold(self) -> None:
        try:
            if self.target.transport == "stdio":
                if not self.target.command:
                    raise UpstreamUnavailable(f"stdio command for '{self.target.name}' is not configured")
            else:
                ssrf.url_check(self.target.url, list(self.target.allowlist), await ssrf.resolve(self.target.url))
            modes = self._modes()
            for index, mode in enumerate(modes):
                try:
                    client = Client(
                        self._transport(),
                        mode=mode,
                        cache=None,
                        message_handler=self._message,
                        read_timeout_seconds=self.target.timeout,
                    )
                    await client.__aenter__()
                except MCPError:
                    if index == len(modes) - 1:
                        raise
                    continue
                try:
                    self.client = client
                    self._ready.set()
                    await self._close.wait()
                finally:
                    await client.__aexit__(None, None, None)
                return
        except BaseException as exc:  # the link reports any failure to its waiters, then dies
            self._error = exc
            if not isinstance(exc, asyncio.CancelledError):
                logger.warning("MCP upstream %s: connection failed: %r", self.target.name, exc)
        finally:
            self.client = None
            self._ready.set()
            if self._errlog is not None:
                self._errlog.close()
                self._errlog = None

    async def session(self) -> Client:
        try:
            await asyncio.wait_for(self._ready.wait(), self.target.timeout)
        except TimeoutError:
            self.close()
            raise UpstreamUnavailable(f"connecting to upstream '{self.target.name}' timed out") from None
        if self.client is None:
            error = self._error
            blocked = ssrf.blocked_in(error)
            if blocked is not None:
                raise blocked
            raise UpstreamUnavailable(f"upstream '{self.target.name}' is unreachable: {_describe(error)}")
        return self.client

    def close(self) -> None:
        self._close.set()
        if not self._ready.is_set():
            self._task.cancel()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "connection closed"
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class UpstreamPool:
    """This process's links, one per upstream server, rebuilt when the server changes or fails."""

    def __init__(self) -> None:
        self._links: dict[int, UpstreamLink] = {}
        self.on_list_changed: Callable[[int], None] | None = None

    def _link(self, target: UpstreamTarget) -> UpstreamLink:
        link = self._links.get(target.server_id)
        if link is None or not link.alive or link.target != target:
            if link is not None:
                link.close()
            link = self._links[target.server_id] = UpstreamLink(target, self.on_list_changed)
        return link

    def _drop(self, link: UpstreamLink) -> None:
        link.close()
        if self._links.get(link.target.server_id) is link:  # not a newer link another request made meanwhile
            del self._links[link.target.server_id]

    async def run(self, target: UpstreamTarget, operation: Callable[[Client], Awaitable[Any]]) -> Any:
        """Run ``operation`` on the upstream's session; one reconnect if the link was broken.

        The link is shared by every request of this process, so only its own failure drops
        it: a failure of one call (the upstream's error, an answer that is not valid, a
        message the transport cannot encode, arguments the SDK refuses) fails that call
        alone, as ``MCPError``, ``UnsendableMessage`` or ``UpstreamCallFailed``.
        """
        for attempt in (1, 2):
            link = self._link(target)
            client = await link.session()
            try:
                return await asyncio.wait_for(operation(client), target.timeout)
            except (MCPError, UnsendableMessage):
                raise
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"upstream '{target.name}' did not answer within {target.timeout:g} s"
                ) from None
            except Exception as exc:
                if link.alive and link.client is client:
                    raise UpstreamCallFailed(
                        f"upstream '{target.name}' could not complete the call: {_describe(exc)}"
                    ) from exc
                self._drop(link)
                if attempt == 2:
                    raise UpstreamUnavailable(f"upstream '{target.name}' failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")

    def forget(self) -> None:
        """Drop every link without closing it: their loop has ended (between tests), so they are gone with it."""
        self._links.clear()

    async def close_all(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)


pool = UpstreamPool()
registry.register("mcp.upstream_pool", reset=pool.forget)


async def catalog_fetch(target: UpstreamTarget) -> dict[str, Any]:
    """Discover an upstream's tools, resources and prompts with a fresh, short-lived connection."""
    link = UpstreamLink(target)
    try:
        client = await link.session()
        info = {
            "protocol_version": client.protocol_version,
            "server_info": _dump(client.server_info) if client.server_info is not None else {},
        }
        capabilities = client.server_capabilities
        tools: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await asyncio.wait_for(client.list_tools(cursor=cursor), target.timeout)
            tools += [_dump(tool) for tool in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        resources: list[dict[str, Any]] = []
        prompts: list[dict[str, Any]] = []
        if capabilities.resources is not None:
            with contextlib.suppress(MCPError):
                resources = [_dump(r) for r in (await client.list_resources()).resources]
        if capabilities.prompts is not None:
            with contextlib.suppress(MCPError):
                prompts = [_dump(p) for p in (await client.list_prompts()).prompts]
        return {**info, "tools": tools, "resources": resources, "prompts": prompts}
    finally:
        link.close()


def catalog_fetch_sync(target: UpstreamTarget) -> dict[str, Any]:
    """``catalog_fetch`` for synchronous callers (admin actions, loadconfig, Celery)."""
    return asyncio.run(_fetch_and_drain(target))


async def _fetch_and_drain(target: UpstreamTarget) -> dict[str, Any]:
    try:
        return await catalog_fetch(target)
    finally:
        await asyncio.gather(*list(_tasks), return_exceptions=True)
