"""A minimal Redis connection for the one call on the request path: the quota reserve script.

redis-py's asyncio client spends ~70 µs of CPU per call here (connection pool, command
packing, a general RESP3 parser, retry wrappers), about half the cost of enforcing quotas
at all; see README, "Cost of quota enforcement". The reserve path needs one command,
EVALSHA, whose reply is an array of integers, sent by one task at a time. This connection
does exactly that over a single socket and nothing else; everything else (settlements,
gauges, the cache) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from urllib.parse import unquote, urlsplit


class RespError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def resp_command(*parts: bytes | str | int) -> bytes:
    """Encode one command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespConnection:
    """One lazily opened connection to the server of a ``redis://`` or ``rediss://`` URL.

    Calls must not overlap (the caller serialises them). Any failure closes the socket and
    raises; the next call reconnects.
    """

    SCHEMES = ("redis", "rediss")

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in self.SCHEMES:
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path else 0
        self.tls = parts.scheme == "rediss"
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._shas: dict[str, bytes] = {}

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self.tls else None
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            await self._roundtrip(resp_command(*auth))
        if self.db:
            await self._roundtrip(resp_command("SELECT", self.db))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _read(self, nested: bool = False) -> object:
        assert self._reader is not None
        line = await self._reader.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b":":
            return int(rest)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self._read(nested=True) for _ in range(count)]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return (await self._reader.readexactly(size + 2))[:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            error = RespError(rest.decode("utf-8", "replace"))
            if nested:  # an error inside an array is a value; raising would leave the rest unread
                return error
            raise error
        raise RespError(f"unexpected reply {line[:40]!r}")

    async def _roundtrip(self, command: bytes) -> object:
        assert self._writer is not None
        self._writer.write(command)
        return await self._read()

    async def call(self, command: bytes) -> object:
        """Send one encoded command and return its reply; reconnect first if needed."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    await self._connect()
                return await self._roundtrip(command)
        except RespError:
            raise
        except BaseException:
            # A timeout or broken socket leaves the stream mid-reply: start afresh next time.
            self.close()
            raise

    async def evalsha(self, script: str, keys: list[str], args: list[int]) -> object:
        """Run ``script`` by its SHA-1, loading it once per connection when Redis lacks it."""
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        command = resp_command(b"EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.call(command)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call(resp_command(b"SCRIPT", b"LOAD", script))
        return await self.call(command)
