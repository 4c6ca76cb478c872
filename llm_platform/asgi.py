"""ASGI entry point: Channels' ProtocolTypeRouter in front of Django and the streaming consumers."""

from __future__ import annotations

import functools
import gc
import os

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
                re_path(r"", django_asgi_app),  # type: ignore[arg-type]  # URLRouter takes ASGI apps
            ]
        ),
    }
)


def _serving_tune() -> None:
    """Two per-request costs of the server under the app, measured with a profiler under load."""
    try:
        from twisted.web import http as twisted_http
    except ImportError:  # served by another ASGI server
        pass
    else:
        # Twisted (daphne's HTTP layer) parses every request's Content-Type with the email
        # package's header parser, ~10% of a small request's CPU; clients send a handful of
        # distinct values, so remember the answers.
        parse = getattr(twisted_http, "_parseContentType", None)
        if parse is not None and not hasattr(parse, "cache_info"):
            twisted_http._parseContentType = functools.lru_cache(maxsize=64)(parse)
    # Everything loaded so far (Django, apps, litellm's price map) lives as long as the
    # process: move it out of the collector's sight so full collections stay short instead
    # of pausing the event loop for tens of milliseconds.
    gc.collect()
    gc.freeze()


_serving_tune()
