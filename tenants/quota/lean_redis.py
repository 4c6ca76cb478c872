"""A lean, pipelined Redis connection for the quota scripts on the hot path.

redis-py's asyncio client spends ~100 µs of CPU per script call on connection-pool
checkout, retries, command packing and its general reply parser; the quota scripts need
none of that. Every request with a quota makes such a call, so this connection does only
what they need: one socket per event loop, commands written as they come and matched to
their replies in order, ``EVALSHA`` falling back to ``EVAL`` when the server has not seen
the script. The replies it parses are RESP2 integers, strings, errors and flat arrays. A call
that gets no reply within ``timeout`` seconds, or a dropped socket, fails every call still
waiting on that socket; the next call connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from typing import Any

from core import registry


class RedisReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


_INCOMPLETE = object()


# Bulk strings already encoded, by value: see command_bytes.
_bulk: dict[str | int, bytes] = {}
registry.register("quota.command_bytes", reset=_bulk.clear)


def command_bytes(*parts: bytes | str | int) -> bytes:
    """A command in RESP's request form (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, bytes):  # unique values (a request's member): not worth keeping
            out.append(b"$%d\r\n%s\r\n" % (len(part), part))
            continue
        # Counter keys, limits, amounts, TTLs in whole seconds repeat for every request of a key
        # in a window: encode each once.
        bulk = _bulk.get(part)
        if bulk is None:
            raw = b"%d" % part if isinstance(part, int) else part.encode()
            bulk = b"$%d\r\n%s\r\n" % (len(raw), raw)
            if len(_bulk) >= 8192:
                _bulk.clear()
            _bulk[part] = bulk
        out.append(bulk)
    return b"".join(out)


def reply_parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at ``pos``: ``(value, next position)``, or ``(_INCOMPLETE, pos)``."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line, after = buffer[pos], bytes(buffer[pos + 1 : end]), end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), after
    if kind == 0x2B:  # '+' simple string
        return line, after
    if kind == 0x2D:  # '-' error
        return RedisReplyError(line.decode(errors="replace")), after
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, pos
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = reply_parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    raise RedisReplyError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiting:
                value, pos_next = reply_parse(self.buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = pos_next
                future = self.waiting.popleft()
                if future.done():
                    continue
                if isinstance(value, RedisReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (ValueError, RedisReplyError):  # a stream we cannot follow: start over
            self.abort()
            return
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(data)
        return future


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by their SHA-1


class ScriptConnection:
    """One pipelined connection to the Redis of ``target`` (host/port or a unix socket path)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 1.0,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password, self.timeout = username, password, timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self.clock_offset_ms: float | None = None  # the server's clock minus ours, learnt on connecting

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            if self.path:
                _, protocol = await loop.create_unix_connection(_Protocol, self.path)
            else:
                _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            try:
                handshake = []
                if self.password:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    handshake.append(protocol.send(command_bytes(*auth)))
                if self.db:
                    handshake.append(protocol.send(command_bytes("SELECT", self.db)))
                for reply in handshake:
                    await reply
                # The server's clock against ours (to the round trip's middle), so a call can carry
                # a deadline the server understands: ``evalsha(..., deadline=True)``.
                sent = time.time()
                seconds, micros = await protocol.send(command_bytes("TIME"))
                received = time.time()
                self.clock_offset_ms = int(seconds) * 1000 + int(micros) / 1000 - (sent + received) * 500
            except BaseException:
                protocol.abort()
                raise
        return protocol

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def call(self, *parts: Any) -> Any:
        protocol = await self._ready()
        future = protocol.send(command_bytes(*parts))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            # Replies are matched in order: after a lost reply the stream cannot be trusted.
            protocol.abort()
            raise

    async def evalsha(self, script: Script, keys: list[str], args: list[Any], *, deadline: bool = False) -> Any:
        """Run ``script``; with ``deadline``, its first argument is the moment (the server's clock, ms)
        after which this caller will have given up on the call, so a script run later can change nothing."""
        if deadline:
            await self._ready()
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *self._args(args, deadline))
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.source, len(keys), *keys, *self._args(args, deadline))

    def _args(self, args: list[Any], deadline: bool) -> list[Any]:
        if not deadline:
            return args
        if self.clock_offset_ms is None:
            return [0, *args]
        return [int(time.time() * 1000 + self.clock_offset_ms + self.timeout * 1000), *args]

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def script_connection_for(url: str, *, timeout: float = 1.0) -> ScriptConnection | None:
    """A lean connection for a plain ``redis://`` or ``unix://`` URL; ``None`` for anything else
    (TLS, extra connection options), where the caller keeps to redis-py."""
    from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

    if not url.startswith(("redis://", "unix://")):
        return None
    options = parse_url(url)
    known = {"host", "port", "db", "username", "password", "path", "connection_class"}
    if set(options) - known:
        return None
    return ScriptConnection(
        host=options.get("host") or "127.0.0.1",
        port=int(options.get("port") or 6379),
        path=options.get("path") if options.get("connection_class") is UnixDomainSocketConnection else None,
        db=int(options.get("db") or 0),
        username=options.get("username"),
        password=options.get("password"),
        timeout=timeout,
    )
