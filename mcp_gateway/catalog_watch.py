"""Catalogue watching for open streams: ``notifications/<kind>/list_changed`` when the lists a key sees change."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core import registry
from core.cancellation import raise_if_cancel_requested
from core.epoch import SharedEpoch
from mcp_gateway.selectors import Catalog, catalog_cache
from tenants.auth import KeyContext

logger = logging.getLogger(__name__)

LIST_KINDS = ("tools", "prompts", "resources")


def catalog_view(catalog: Catalog, key: KeyContext, bundle: str) -> dict[str, str]:
    """A digest per list (tools, prompts, resources) of what this key sees on this endpoint."""
    tools = [entry.spec for entry in catalog.visible_tools(key, bundle or None)]
    prompts = [] if bundle else catalog.visible_prompts(key)
    resources = [] if bundle else catalog.visible_resources(key)
    return {
        kind: hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
        for kind, items in zip(LIST_KINDS, (tools, prompts, resources), strict=True)
    }


@dataclass(eq=False)
class Watcher:
    """One open stream that wants to hear when the lists its key sees change."""

    key: KeyContext
    bundle: str
    deliver: Callable[[list[str]], Awaitable[None]]  # called with the kinds that changed
    kinds: frozenset[str] = frozenset(LIST_KINDS)
    seen: dict[str, str] = field(default_factory=dict)


class CatalogWatch:
    """This process's streams waiting for catalogue changes, served by one task that polls the shared epoch.

    A change anywhere (an admin refresh, a grant, an upstream's own list_changed) bumps the
    catalogue's epoch; each stream is then told only about the lists that changed for its
    key, so one tenant's grants are no signal to another tenant.
    """

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.epoch = SharedEpoch("mcp-catalog")
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._adding = 0  # streams between "the poller runs" and "in the watch list"

    async def add(self, watcher: Watcher) -> None:
        self._adding += 1
        try:
            task = self._task
            if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
                self._started = asyncio.Event()
                self._task = asyncio.ensure_future(self._run(self._started))
            # The view is read only after the poller noted the epoch, so a change made meanwhile
            # (even one made while this stream opened) is either in the view or still to come.
            await self._started.wait()
            watcher.seen = catalog_view(await catalog_cache.get(), watcher.key, watcher.bundle)
            self.watchers.add(watcher)
        finally:
            self._adding -= 1

    def remove(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def forget(self) -> None:
        """Drop the watchers and the poller, as a fresh process has none (the poller's loop may be gone)."""
        self.watchers.clear()
        self._task = None
        self._started = asyncio.Event()
        self._adding = 0

    async def _run(self, started: asyncio.Event) -> None:
        try:
            await self.epoch.moved()  # note the current epoch: only later changes count
        finally:
            started.set()
        while self.watchers or self._adding:
            await asyncio.sleep(max(settings.KEY_REVOCATION_POLL, 0.25))
            try:
                if await self.epoch.moved():
                    await self.check()
            except Exception as exc:
                raise_if_cancel_requested(exc)
                logger.warning("MCP catalogue watch failed: %s", exc)

    async def check(self) -> None:
        """Reload the catalogue and tell each stream which of its lists changed."""
        catalog_cache.clear()
        catalog = await catalog_cache.get()
        for watcher in list(self.watchers):
            view = catalog_view(catalog, watcher.key, watcher.bundle)
            changed = [kind for kind in LIST_KINDS if view[kind] != watcher.seen.get(kind) and kind in watcher.kinds]
            watcher.seen = view
            if changed:
                try:
                    await watcher.deliver(changed)
                except Exception as exc:
                    logger.warning("MCP list_changed delivery failed: %s", exc)


catalog_watch = CatalogWatch()
registry.register("mcp.catalog_watch", reset=catalog_watch.forget)


def list_changed(kind: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}
    if meta:
        message["params"] = {"_meta": meta}
    return message
