"""The Channels consumers that serve ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.exceptions import StopConsumer
from django.conf import settings

from core.consumers import BoundedHttpConsumer
from core.errors import InvalidRequest, PayloadTooLarge
from routing.model_call import ModelCall
from routing.parsing import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint

# The ASGI scope extension in which the server (``manage.py serve``) hands each request an
# object whose ``delivered()`` says how many bytes of the response reached the client. By
# name, not import: apps do not import the project package (its flow control lives there).
STREAM_EXTENSION = "llmp.stream"


class ChatCompletionsConsumer(BoundedHttpConsumer):
    """Runs each request as a task so a client disconnect can cancel it mid-stream.

    Channels' stock ``AsyncHttpConsumer`` awaits ``handle`` inside its message loop, so it
    would only notice a disconnect after the stream ended. Here the loop stays free to
    receive ``http.disconnect``; the task is then cancelled and its usage still recorded.
    Using Channels directly (not Django's view stack) also keeps middleware and signal
    dispatch off this hot path; see docs/architecture.md, "Why a Channels consumer".
    """

    endpoint: Endpoint = CHAT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task: asyncio.Task[None] | None = None
        self.completion: ModelCall | None = None
        self.sent = 0

    async def body_received(self, body: bytes) -> None:
        self.task = asyncio.ensure_future(self._serve(body))

    async def _serve(self, body: bytes) -> None:
        client = self.scope.get("client")
        self.completion = completion = ModelCall(
            headers=self.scope["headers"],
            client_ip=client[0] if client else None,
            send_start=self._start,
            send_body=self._body,
            endpoint=self.endpoint,
            delivered=self._delivered,
        )
        if self.scope["method"] != "POST":
            await completion.refuse(
                InvalidRequest(f"Use POST for /v1{self.endpoint.path}.", code="method_not_allowed", status=405)
            )
        elif self.too_large:
            await completion.refuse(PayloadTooLarge(f"The request body exceeds {settings.MAX_REQUEST_BYTES} bytes."))
        else:
            await completion.run(body)
        # The completion holds this consumer's send methods: drop the cycle now rather than
        # leave it to the garbage collector.
        self.completion = None

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, body: bytes, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": body, "more_body": more})
        self.sent += len(body)

    def _delivered(self) -> int:
        """Bytes the client received: the server's count when it keeps one (``serve``), else the body bytes sent."""
        gate = (self.scope.get("extensions") or {}).get(STREAM_EXTENSION)
        return gate.delivered() if gate is not None else self.sent

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        task = self.task
        if task is not None and not task.done():
            finished = self.completion is not None and self.completion.response_complete
            if not finished:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        raise StopConsumer()


class CompletionsConsumer(ChatCompletionsConsumer):
    """``/v1/completions`` (legacy text completions), streamed or not, through the same flow."""

    endpoint = COMPLETIONS


class EmbeddingsConsumer(ChatCompletionsConsumer):
    """``/v1/embeddings`` through the same flow (auth, scope, quotas, routing, usage)."""

    endpoint = EMBEDDINGS
