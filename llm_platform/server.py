"""The daphne server the platform runs (``manage.py serve``): daphne's, with flow control for streamed responses.

Importing this module installs Twisted's asyncio reactor (through ``daphne.server``): import
it before the app.
"""

from __future__ import annotations

from typing import Any

from daphne.server import Server
from django.conf import settings

from llm_platform.flow import STREAM_EXTENSION, StreamGate, buffered, chunk_framing


class PlatformServer(Server):
    """Daphne's server whose ``send`` waits while a streamed response's client is behind.

    Daphne writes every body chunk into the connection at once and Twisted buffers what the
    client has not read without limit. Here each HTTP request gets a ``StreamGate`` (in its
    scope, ``STREAM_EXTENSION``); once its response streams (a body chunk with
    ``more_body``) the gate is registered as the request's producer and the connection's
    send buffer is limited to ``STREAM_BUFFER_BYTES``. A chunk sent while the buffer is
    full waits for the client, up to ``STREAM_STALL_TIMEOUT`` seconds, then the connection
    is cut. ``STREAM_BACKPRESSURE=false`` turns it all off (daphne's own behaviour).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_backpressure: bool = settings.STREAM_BACKPRESSURE
        self.stream_buffer_bytes: int = settings.STREAM_BUFFER_BYTES
        self.stream_stall_timeout: float = settings.STREAM_STALL_TIMEOUT

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if self.stream_backpressure and scope.get("type") == "http":
            client = scope.get("client")
            gate = StreamGate(f"{client[0]}:{client[1]}" if client else "?")
            protocol.stream_gate = gate
            scope["extensions"] = {**(scope.get("extensions") or {}), STREAM_EXTENSION: gate}
        return super().create_application(protocol, scope)

    async def handle_reply(self, protocol: Any, message: dict[str, Any]) -> None:
        gate: StreamGate | None = getattr(protocol, "stream_gate", None)
        if gate is None or message["type"] != "http.response.body":
            await super().handle_reply(protocol, message)
            return
        # When the client keeps up, this is the whole cost per chunk: a few flag checks and sums.
        if gate.paused:
            await gate.writable(self.stream_stall_timeout)
        if gate.lost:  # the client left or was cut: the app hears of it as a disconnect
            await gate.gone()
            return
        body = message.get("body", b"")
        if message.get("more_body") and not gate.registered:
            self._gate_register(protocol, gate)
            if gate.registered:
                # The first chunk carries the response head: measure what it adds to the buffer.
                before = buffered(gate.transport)
                await super().handle_reply(protocol, message)
                gate.written += buffered(gate.transport) - before
                gate.chunked = bool(getattr(protocol, "chunked", False))
                return
        elif not message.get("more_body") and gate.registered:
            self._gate_unregister(protocol, gate)
        gate.written += len(body) + chunk_framing(len(body)) if gate.chunked else len(body)
        await super().handle_reply(protocol, message)

    def _gate_register(self, protocol: Any, gate: StreamGate) -> None:
        channel = getattr(protocol, "channel", None)
        if channel is None or protocol.finished:
            return  # disconnected: daphne drops what is sent from now on
        transport = channel.transport
        # Twisted pauses its producer when its buffer holds more than this, and resumes it
        # once the client has taken the whole buffer.
        transport.bufferSize = self.stream_buffer_bytes
        gate.transport = transport
        gate.registered = True
        protocol.registerProducer(gate, True)
        # The channel may be waiting for its transport already: that pause came before this
        # producer did (the resume will reach it).
        gate.paused = bool(getattr(channel, "_waitingForTransport", False))

    @staticmethod
    def _gate_unregister(protocol: Any, gate: StreamGate) -> None:
        # Before the last chunk: Twisted's request insists on it before it may finish.
        gate.registered = False
        if getattr(protocol, "channel", None) is not None and protocol.producer is gate:
            protocol.unregisterProducer()
