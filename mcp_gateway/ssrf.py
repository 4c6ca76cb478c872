"""Refuses upstream URLs that point at loopback, link-local, metadata or private addresses unless allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from tenants.errors import PermissionDenied

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
    host = urlsplit(url).hostname or ""
    literal = _literal_or_none(host)
    if literal is not None:
        return literal
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})
