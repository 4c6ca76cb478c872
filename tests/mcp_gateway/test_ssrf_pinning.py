"""Upstream connections go to the very address the SSRF check passed: no DNS-rebinding window, no proxy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import httpcore2
import httpx2
import pytest

from mcp_gateway import ssrf
from mcp_gateway.upstream import UpstreamTarget, catalog_fetch_sync
from tests import live
from tests.mcp_gateway.servers import UPSTREAM_TOKEN

PUBLIC = "93.184.216.34"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """Answers for made-up names, one per lookup in order (the last one repeats); other names resolve normally."""
    answers: dict[str, list[list[str]]] = {}
    asked: list[str] = []
    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return await real(self, host, port, **kwargs)
        asked.append(name)
        queue = answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (a, port or 0),
            )
            for a in addresses
        ]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)

    def answer(name: str, *lookups: list[str]) -> list[str]:
        answers[name] = list(lookups)
        return asked

    return answer


def target(url: str, transport: str = "streamable_http", allowlist: tuple[str, ...] = ()) -> UpstreamTarget:
    return UpstreamTarget(
        server_id=1,
        name="pinned",
        url=url,
        transport=transport,
        headers=(("Authorization", f"Bearer {UPSTREAM_TOKEN}"),),
        allowlist=allowlist,
        revision="",
        timeout=10.0,
    )


def renamed(server: live.Server, host: str) -> str:
    return server.url.replace("127.0.0.1", host)


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused_at_connect_time(
    dns: Callable[..., list[str]],
    settings: Any,
    mcp_upstream_http: live.Server,
    mcp_upstream_sse: live.Server,
    transport: str,
) -> None:
    settings.SSRF_ALLOWLIST = []
    server = mcp_upstream_sse if transport == "sse" else mcp_upstream_http
    # First lookup (the check before connecting): a public address. Every later one: the
    # loopback address the upstream test server really listens on.
    asked = dns("rebind.example", [PUBLIC], ["127.0.0.1"])
    with pytest.raises(ssrf.SsrfBlocked, match=r"127\.0\.0\.1"):
        catalog_fetch_sync(target(renamed(server, "rebind.example"), transport))
    assert len(asked) == 2  # checked once before, and again where the socket is opened


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_an_allowed_upstream_behind_a_name_still_works_and_env_proxies_are_ignored(
    dns: Callable[..., list[str]],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    mcp_upstream_http: live.Server,
    mcp_upstream_sse: live.Server,
    transport: str,
) -> None:
    settings.SSRF_ALLOWLIST = []
    # A proxy that does not exist: honouring it would fail the connection.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = mcp_upstream_sse if transport == "sse" else mcp_upstream_http
    dns("tools.internal.example", ["127.0.0.1"])
    catalog = catalog_fetch_sync(
        target(renamed(server, "tools.internal.example"), transport, allowlist=("127.0.0.0/8",))
    )
    assert {"echo"} <= {tool["name"] for tool in catalog["tools"]}


class RecordingStream(httpcore2.AsyncMockStream):
    def __init__(self, log: dict[str, Any], buffer: list[bytes]) -> None:
        super().__init__(buffer)
        self.log = log

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.log.setdefault("sent", b"")
        self.log["sent"] += buffer

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: Any = None) -> Any:  # noqa: ASYNC109
        self.log["server_hostname"] = server_hostname
        return self


class RecordingBackend(httpcore2.AsyncMockBackend):
    def __init__(self) -> None:
        super().__init__([b"HTTP/1.1 204 No Content\r\n", b"\r\n"])
        self.log: dict[str, Any] = {}

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        self.log["address"] = (host, port)
        return RecordingStream(self.log, list(self._buffer))


def test_the_socket_goes_to_the_checked_address_while_tls_and_host_keep_the_name(
    dns: Callable[..., list[str]], settings: Any
) -> None:
    settings.SSRF_ALLOWLIST = []
    dns("tools.example.com", [PUBLIC])
    backend = RecordingBackend()

    async def fetch() -> int:
        transport = ssrf.PinnedTransport([], inner=backend)
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            return (await client.get("https://tools.example.com/mcp")).status_code

    assert asyncio.run(fetch()) == 204
    assert backend.log["address"] == (PUBLIC, 443)
    assert backend.log["server_hostname"] == "tools.example.com"
    assert b"\r\nHost: tools.example.com\r\n" in backend.log["sent"]


def test_every_address_a_name_resolves_to_is_checked_before_any_connection(
    dns: Callable[..., list[str]], settings: Any
) -> None:
    settings.SSRF_ALLOWLIST = []
    dns("mixed.example", [PUBLIC, "10.0.0.5"])
    backend = RecordingBackend()

    async def connect() -> None:
        await ssrf.PinnedBackend([], backend).connect_tcp("mixed.example", 443)

    with pytest.raises(ssrf.SsrfBlocked, match=r"10\.0\.0\.5"):
        asyncio.run(connect())
    assert "address" not in backend.log
