"""Flow control for streamed responses: a slow reader slows its stream down, a stalled one is cut.

Without it, the server under the app (daphne on Twisted) takes every body chunk at once and
buffers what the client has not read yet without limit, so the app reads its upstream to the
end whatever the client takes. A ``StreamGate`` is one response's push producer, registered
with Twisted once the response streams: Twisted pauses it when the connection's send buffer
holds more than its limit, and resumes it when the client has taken the buffer. While it is
paused, the server's ``send`` waits (see ``llm_platform.server``), so the app, which awaits
each send, reads nothing more from its upstream; a send that waits longer than the stall
limit cuts the connection, and the app sees the client's disconnect.

Nothing here imports Twisted: the app reads a gate from its scope (``STREAM_EXTENSION``) to
learn how many bytes its client received.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
from typing import Any

logger = logging.getLogger(__name__)

# The ASGI scope extension under which the server hands an HTTP app its response's gate.
STREAM_EXTENSION = "llmp.stream"

# Longest the first send after a connection ended waits for the app to be told (and cancelled).
GONE_GRACE = 1.0


# Linux's ioctl for a TCP socket's send queue (SIOCOUTQ); elsewhere the kernel's share is not counted.
_OUTQ = getattr(termios, "TIOCOUTQ", None)


def _kernel_unsent(transport: Any) -> int:
    """Bytes the kernel holds in the socket's send queue, not yet acknowledged by the client (Linux)."""
    sock = getattr(transport, "socket", None)
    if _OUTQ is None or not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def buffered(transport: Any) -> int:
    """Bytes written to a Twisted ``transport`` that are still in its own buffer."""
    pending = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    return max(0, pending + getattr(transport, "_tempDataLen", 0))


def _unsent(transport: Any) -> int:
    """Bytes written to ``transport`` that have not reached the client: in Twisted's buffer and the kernel's."""
    if transport is None:
        return 0
    return buffered(transport) + _kernel_unsent(transport)


def chunk_framing(size: int) -> int:
    """Bytes HTTP/1.1 chunked encoding adds around a body chunk of ``size`` bytes (``<hex size>\\r\\n…\\r\\n``)."""
    return len(f"{size:x}") + 4 if size else 0


class StreamGate:
    """One HTTP response's flow control; provides Twisted's ``IPushProducer``.

    ``written`` counts the bytes of the response handed to the connection as they go on the
    wire (head, body and chunk framing). When the connection ends, what had not reached the
    client yet is noted, so ``delivered`` says how much of the response the client received.
    """

    __slots__ = (
        "_waiter",
        "chunked",
        "client",
        "cut",
        "lost",
        "noticed",
        "paused",
        "registered",
        "transport",
        "unsent_at_end",
        "written",
    )

    def __init__(self, client: str) -> None:
        self.client = client
        self.paused = False
        self.registered = False
        self.chunked = False
        self.lost = False
        self.noticed = False
        self.cut = False
        self.written = 0
        self.unsent_at_end: int | None = None
        self.transport: Any = None
        self._waiter: asyncio.Future[None] | None = None

    # IPushProducer, called by Twisted's HTTP channel on behalf of the connection.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        # The connection is being lost; its socket is still open, so the kernel's queue can be read.
        if not self.lost:
            self.lost = True
            self.unsent_at_end = _unsent(self.transport)
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def delivered(self) -> int:
        """Bytes the client received: all written but what was still unsent (when the connection ended, or now)."""
        unsent = self.unsent_at_end if self.unsent_at_end is not None else _unsent(self.transport)
        return max(0, self.written - unsent)

    async def _woken(self, seconds: float) -> bool:
        """Wait for a wake-up; False if ``seconds`` passed first."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        return True

    async def writable(self, stall_timeout: float) -> None:
        """Wait until the client has taken what is buffered, the connection ends, or the client is cut.

        A client that leaves the buffer full for ``stall_timeout`` seconds is cut: its connection is
        aborted, dropping what is buffered, and the app gets ``http.disconnect`` as for any
        client that leaves.
        """
        while self.paused and not self.lost:
            if not await self._woken(stall_timeout):
                self._cut(stall_timeout)

    async def gone(self) -> None:
        """A send to a connection that has ended: the first one waits (briefly) for the app to hear of it.

        The app's task is cancelled when its ``http.disconnect`` is dispatched; until then,
        with its upstream's bytes already buffered, it could relay them all without once
        yielding to the event loop, as if the client were still reading.
        """
        if not self.noticed:
            self.noticed = True
            await asyncio.sleep(GONE_GRACE)

    def _cut(self, stall_timeout: float) -> None:
        self.cut = True
        self.unsent_at_end = _unsent(self.transport)
        logger.warning(
            "stream to %s cut: its send buffer stayed full for %g s (%d bytes received)",
            self.client,
            stall_timeout,
            self.delivered(),
        )
        self.lost = True
        if self.transport is not None:
            self.transport.abortConnection()
