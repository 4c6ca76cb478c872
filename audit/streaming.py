"""Streamed downloads that stay streamed under both ASGI and WSGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse

_DONE = object()


def _next(chunks: Iterator[bytes]) -> object:
    return next(chunks, _DONE)


async def _pull(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # Django consumes a *sync* iterator under ASGI into a list first (unbounded memory);
    # pulling one chunk at a time off the event loop keeps the download streamed.
    pull = sync_to_async(_next, thread_sensitive=True)
    while True:
        chunk = await pull(chunks)
        if chunk is _DONE:
            return
        yield chunk  # type: ignore[misc]


def streaming_download(
    request: HttpRequest, chunks: Iterator[bytes], *, filename: str, content_type: str
) -> StreamingHttpResponse:
    """A download of ``chunks``; the iterator may query the database (it runs in a worker thread)."""
    content = _pull(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
