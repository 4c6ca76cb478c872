"""Background refreshes of upstream catalogs (thin: they call the service)."""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from celery import shared_task
from django.db import close_old_connections

from core import registry

logger = logging.getLogger(__name__)
_pending: dict[int, float] = {}
_running: set[asyncio.Task[None]] = set()
DEBOUNCE_SECONDS = 2.0


@shared_task
def server_refresh_task(server_id: int, actor: str = "system") -> None:
    from mcp_gateway.models import UpstreamServer
    from mcp_gateway.services import server_refresh

    close_old_connections()
    server = UpstreamServer.objects.filter(pk=server_id).first()
    if server is not None:
        server_refresh(server=server, actor=actor)


def list_changed(server_id: int) -> None:
    """An upstream said its tools/prompts/resources changed: refresh the catalog soon (debounced)."""
    now = time.monotonic()
    if now - _pending.get(server_id, 0.0) < DEBOUNCE_SECONDS:
        return
    _pending[server_id] = now

    async def later() -> None:
        await asyncio.sleep(DEBOUNCE_SECONDS)
        try:
            await sync_to_async(server_refresh_task, thread_sensitive=False)(server_id, "system:list_changed")
        except Exception:
            logger.exception("refresh of MCP server %s after list_changed failed", server_id)

    task = asyncio.ensure_future(later())
    _running.add(task)
    task.add_done_callback(_running.discard)


def _debounce_forget() -> None:
    """A fresh process has no refresh pending (the tasks of a test's loop end with it)."""
    _pending.clear()
    _running.clear()


registry.register("mcp.list_changed_debounce", reset=_debounce_forget)
