"""The base of the platform's own HTTP consumers: no ORM hop per message, a bounded request body."""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings


class BoundedHttpConsumer(AsyncHttpConsumer):
    """An ``AsyncHttpConsumer`` that collects at most ``MAX_REQUEST_BYTES`` of body, then serves it once.

    Subclasses implement ``body_received(body)``; when the body was larger than the limit,
    ``too_large`` is set and ``body`` holds what came before it went over.
    """

    # No channel layer per consumer: a plain HTTP request needs no group messaging (and
    # with Redis it would cost a round trip per request).
    channel_layer_alias = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.size = 0
        self.too_large = False

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch first runs close_old_connections through sync_to_async: a thread
        # hop per message (~8% of a request's CPU under load). These consumers never touch
        # the ORM on the event loop; their database reads run on threads that manage their
        # own connections (core.hot_reads, the batch writers).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def http_request(self, message: dict[str, Any]) -> None:
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > settings.MAX_REQUEST_BYTES:
            self.too_large = True
        elif chunk:
            self.body.append(chunk)
        if message.get("more_body"):
            return
        await self.body_received(b"".join(self.body))

    async def body_received(self, body: bytes) -> None:
        raise NotImplementedError
