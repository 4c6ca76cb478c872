"""ASGI entry point: Channels' ProtocolTypeRouter in front of Django and the streaming consumers."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")

from django.core.asgi import get_asgi_application

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
from routing.consumers import ChatCompletionsConsumer  # noqa: E402

if settings.SERVE_STATIC:
    # The admin's CSS/JS, served by the app itself so one process is the whole web tier;
    # set SERVE_STATIC=false when a proxy or CDN serves STATIC_ROOT instead.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("v1/chat/completions", ChatCompletionsConsumer.as_asgi()),
                path("mcp", StreamableHttpConsumer.as_asgi()),
                path("mcp/sse", LegacySseConsumer.as_asgi()),
                path("mcp/messages", LegacyMessagesConsumer.as_asgi()),
                re_path(r"^mcp/(?P<bundle>[a-z0-9][a-z0-9_-]{0,62})/sse$", LegacySseConsumer.as_asgi()),
                re_path(r"^mcp/(?P<bundle>[a-z0-9][a-z0-9_-]{0,62})$", StreamableHttpConsumer.as_asgi()),
                re_path(r"", django_asgi_app),
            ]
        ),
    }
)
