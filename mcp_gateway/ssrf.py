"""Refuses upstream URLs that point at loopback, link-local, metadata or private addresses unless allowed."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore2
import httpx2
from django.conf import settings

from core.errors import PermissionDenied

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SsrfBlocked(PermissionDenied):
    code = "ssrf_blocked"


def _forbidden(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or address in ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, some clouds' metadata
    )


def allowlist_parse(entries: list[str]) -> tuple[frozenset[str], tuple[IpNetwork, ...]]:
    hosts: set[str] = set()
    networks: list[IpNetwork] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.strip("[]"))
    return frozenset(hosts), tuple(networks)


def url_check(url: str, allowlist: list[str], addresses: list[str]) -> None:
    """Raise ``SsrfBlocked`` unless every address the URL's host resolves to may be reached."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise SsrfBlocked(f"Upstream URL '{url}' must be an http(s) URL with a host.")
    host_check(host, allowlist, addresses)


def host_check(host: str, allowlist: list[str], addresses: list[str]) -> None:
    """Raise ``SsrfBlocked`` unless ``host`` is allowed by name or each of its ``addresses`` may be reached."""
    host = host.lower().strip("[]")
    hosts, networks = allowlist_parse([*settings.SSRF_ALLOWLIST, *allowlist])
    if host in hosts:
        return
    if not addresses:
        raise SsrfBlocked(f"Upstream host '{host}' does not resolve.")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if any(address in network for network in networks):
            continue
        if _forbidden(address):
            raise SsrfBlocked(
                f"Upstream host '{host}' resolves to {address}, a loopback, link-local, metadata or private address; "
                "add it to the SSRF allow-list (admin, or SSRF_ALLOWLIST) if it is meant to be reached."
            )


def _literal_or_none(host: str) -> list[str] | None:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        return None


def resolve_sync(url: str) -> list[str]:
    host = urlsplit(url).hostname or ""
    literal = _literal_or_none(host)
    if literal is not None:
        return literal
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


async def resolve(url: str) -> list[str]:
    return await resolve_host(urlsplit(url).hostname or "")


async def resolve_host(host: str) -> list[str]:
    """The host's addresses in the resolver's order of preference (RFC 6724), each once."""
    literal = _literal_or_none(host)
    if literal is not None:
        return literal
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses it has just resolved and checked, closing the DNS-rebinding window.

    Resolving, checking and connecting happen in one step here, so the address the socket
    goes to is one that passed the SSRF policy: a name that answers with a public address
    to an earlier check and with 127.0.0.1 now is refused now. TLS is started afterwards by
    the connection pool with the URL's own host name, so SNI and certificate verification
    (and the Host header) are those of the name, not of the address.
    """

    def __init__(self, allowlist: Iterable[str], inner: httpcore2.AsyncNetworkBackend | None = None) -> None:
        self.allowlist = list(allowlist)
        self.inner = inner or httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore2's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve_host(host)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving '{host}' timed out") from exc
        host_check(host, self.allowlist, addresses)
        error: Exception = httpcore2.ConnectError(f"'{host}' does not resolve")
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise SsrfBlocked("Upstream connections are TCP only.")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context()  # built once: loading the CA bundle costs milliseconds


class PinnedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport with a ``PinnedBackend`` underneath and never a proxy.

    A proxy (``HTTP(S)_PROXY``) would resolve and connect on its own, beyond the check, so
    upstream connections ignore the proxy environment altogether.
    """

    def __init__(self, allowlist: Iterable[str], *, inner: httpcore2.AsyncNetworkBackend | None = None) -> None:
        super().__init__(verify=tls_context())
        # httpx2 has no public way to hand its pool a network backend; the pool it built is
        # replaced by one with the same TLS context and default limits that has it.
        limits = httpx2.Limits()
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=tls_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(allowlist, inner),
        )


def pinned_client(
    allowlist: Iterable[str],
    *,
    timeout: httpx2.Timeout,
    headers: dict[str, str] | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """An httpx2 client for upstream connections: pinned to checked addresses, no env proxies or .netrc."""
    return httpx2.AsyncClient(
        transport=PinnedTransport(allowlist), headers=headers, timeout=timeout, auth=auth, trust_env=False
    )


def blocked_in(error: BaseException | None) -> SsrfBlocked | None:
    """The ``SsrfBlocked`` behind ``error``, also from inside the SDK's exception groups."""
    if isinstance(error, SsrfBlocked):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = blocked_in(inner)
            if found is not None:
                return found
    if error is not None and error.__cause__ is not None and error.__cause__ is not error:
        return blocked_in(error.__cause__)
    return None
