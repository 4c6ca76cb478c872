"""ASGI entry point: Channels' ProtocolTypeRouter in front of Django and the streaming consumers."""

from __future__ import annotations

import functools
import gc
import json
import os
from http import HTTPStatus
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")

from django.core.asgi import get_asgi_application

from observability import telemetry

# Tracing from the OTEL_* variables (off unless an exporter is named), before Django loads
# its middleware so the Django instrumentation can add its own.
telemetry.setup(service="llm-platform")

# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from llm_platform.middleware import ApiErrorShape  # noqa: E402
from mcp_gateway.consumers import (  # noqa: E402
    LegacyMessagesConsumer,
    LegacySseConsumer,
    StreamableHttpConsumer,
)
from routing.consumers import ChatCompletionsConsumer, CompletionsConsumer, EmbeddingsConsumer  # noqa: E402

if settings.SERVE_STATIC:
    # The admin's CSS/JS, served by the app itself so one process is the whole web tier;
    # set SERVE_STATIC=false when a proxy or CDN serves STATIC_ROOT instead.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("v1/chat/completions", ChatCompletionsConsumer.as_asgi()),
                path("v1/completions", CompletionsConsumer.as_asgi()),
                path("v1/embeddings", EmbeddingsConsumer.as_asgi()),
                path("mcp", StreamableHttpConsumer.as_asgi()),
                path("mcp/sse", LegacySseConsumer.as_asgi()),
                path("mcp/messages", LegacyMessagesConsumer.as_asgi()),
                re_path(r"^mcp/(?P<bundle>[a-z0-9][a-z0-9_-]{0,62})/sse$", LegacySseConsumer.as_asgi()),
                re_path(r"^mcp/(?P<bundle>[a-z0-9][a-z0-9_-]{0,62})$", StreamableHttpConsumer.as_asgi()),
                re_path(r"", ApiErrorShape(django_asgi_app)),  # type: ignore[arg-type]  # URLRouter takes ASGI apps
            ]
        ),
    }
)


def _header_refusal(channel: Any, status: int) -> None:
    """Answer a request whose head Twisted refuses with a JSON error, then close the connection.

    What is JSON depends on the door: a JSON-RPC error object for MCP, the OpenAI error shape
    for everything else. The path is known only once the request line was read.
    """
    on_request_line = getattr(channel, "_HTTPChannel__first_line", 0)
    path = b"" if on_request_line else (getattr(channel, "_path", None) or b"")
    reason = {
        400: "The request head is malformed.",
        414: "The request line is longer than 16384 bytes.",
        431: "A request header line is longer than 16384 bytes, or all headers together are, or there are "
        "more than 500 of them; an API key goes in one Authorization header of at most 4096 bytes.",
    }[status]
    if path == b"/mcp" or path.startswith((b"/mcp/", b"/mcp?")):
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": reason}}
    else:
        code = {400: "bad_request", 414: "request_line_too_large", 431: "request_header_fields_too_large"}[status]
        body = {"error": {"message": reason, "type": "invalid_request_error", "code": code, "param": None}}
    payload = json.dumps(body).encode()
    phrase = HTTPStatus(status).phrase.encode()
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, phrase, len(payload), payload)
    )
    # Half-close and read on (discarding) rather than close outright: closing with the rest
    # of a large head unread makes the kernel reset the connection, and the client would
    # lose the answer. The channel's idle timeout still ends a client that never stops.
    channel.dataReceived = lambda data: None
    channel.lineReceived = lambda line: None
    channel.setTimeout(10)
    lose_write = getattr(channel.transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        channel.transport.loseConnection()


def _header_refusals_json(http_channel: Any) -> None:
    """Twisted's answers to an oversized request head become JSON errors (status 431, 414 or 400).

    A header line over ``MAX_LENGTH`` (16 KB; e.g. a huge Authorization header) made Twisted
    close the connection without a word, so the client saw an empty reply; a head over
    ``totalHeadersSize`` or with too many headers got a bare ``400`` without a body.
    """
    if getattr(http_channel, "_llmp_json_refusals", False):
        return
    if not hasattr(http_channel, "lineLengthExceeded") or not hasattr(
        http_channel, "_respondToBadRequestAndDisconnect"
    ):
        return  # another Twisted: leave it as it is rather than guess

    def line_length_exceeded(self: Any, line: bytes) -> None:
        _header_refusal(self, 414 if getattr(self, "_HTTPChannel__first_line", 0) else 431)

    def respond_to_bad_request_and_disconnect(self: Any) -> None:
        too_big = getattr(self, "_receivedHeaderSize", 0) > getattr(self, "totalHeadersSize", 16384)
        too_many = getattr(self, "_receivedHeaderCount", 0) > getattr(self, "maxHeaders", 500)
        _header_refusal(self, 431 if too_big or too_many else 400)

    http_channel.lineLengthExceeded = line_length_exceeded
    http_channel._respondToBadRequestAndDisconnect = respond_to_bad_request_and_disconnect
    http_channel._llmp_json_refusals = True


def twisted_patches_apply() -> None:
    """Two changes to Twisted (daphne's HTTP layer) through its private names, each checked for first:
    a cache on its Content-Type parser, and JSON refusals of oversized request heads."""
    try:
        from twisted.web import http as twisted_http
    except ImportError:  # served by another ASGI server
        return
    # Twisted parses every request's Content-Type with the email package's header parser,
    # ~10% of a small request's CPU (measured with a profiler under load); clients send a
    # handful of distinct values, so remember the answers.
    parse = getattr(twisted_http, "_parseContentType", None)
    if parse is not None and not hasattr(parse, "cache_info"):
        twisted_http._parseContentType = functools.lru_cache(maxsize=64)(parse)
    channel = getattr(twisted_http, "HTTPChannel", None)
    if channel is not None:
        _header_refusals_json(channel)


def _serving_tune() -> None:
    """The per-request costs of the server under the app, and its refusals made JSON (TWISTED_PATCHES)."""
    if settings.TWISTED_PATCHES:
        twisted_patches_apply()
    # Everything loaded so far (Django, apps, litellm's price map) lives as long as the
    # process: move it out of the collector's sight so full collections stay short instead
    # of pausing the event loop for tens of milliseconds.
    gc.collect()
    gc.freeze()


_serving_tune()
