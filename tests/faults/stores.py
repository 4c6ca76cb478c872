"""Proxies in front of the stores that the fault tests black-hole, cut or drop, and the servers' environment."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tests import live


class Proxy(live.TcpProxy):
    """A TcpProxy that can also break the connections it holds while still accepting new ones."""

    def drop_connections(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def proxied(url: str, proxy: Proxy) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials and path kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}127.0.0.1:{proxy.port}"))


@dataclass
class Stores:
    database: Proxy
    redis: Proxy
    env: dict[str, str]
