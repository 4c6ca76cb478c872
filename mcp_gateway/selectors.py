"""Reads for the MCP hot path: an in-process snapshot of servers, tools, grants and bundles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from core import registry
from core.epoch import SharedEpoch
from core.errors import ServiceUnavailable
from core.hot_reads import ReloadedValue
from mcp_gateway.models import TOOL_SEPARATOR, SsrfAllowEntry, ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from tenants.auth import KeyContext


def upstream_target(server: UpstreamServer, allowlist: list[str]) -> Any:
    from mcp_gateway.upstream import UpstreamTarget

    headers: tuple[tuple[str, str], ...] = ()
    if server.credential and server.credential_header:
        headers = ((server.credential_header, server.credential),)
    return UpstreamTarget(
        server_id=server.pk,
        name=server.name,
        url=server.url,
        transport=server.transport,
        headers=headers,
        allowlist=tuple(allowlist),
        revision=server.updated_at.isoformat() if server.updated_at else "",
        timeout=settings.MCP_UPSTREAM_TIMEOUT,
        command=tuple(settings.MCP_STDIO_COMMANDS.get(server.command, ())) if server.transport == "stdio" else (),
    )


def servers_grantable_by(tenant_ids: set[int]) -> QuerySet[UpstreamServer]:
    """Servers a tenant admin of ``tenant_ids`` works with: open for self-service, or already granted to them."""
    return UpstreamServer.objects.filter(
        Q(tenant_self_service=True) | Q(grants__tenant_id__in=tenant_ids, grants__api_key__isnull=True)
    ).distinct()


@dataclass(frozen=True, slots=True)
class ToolEntry:
    public_name: str  # "<server>.<tool>"
    server_id: int
    server_name: str
    name: str  # the tool's name on its server
    spec: dict[str, Any]  # the tools/list entry under its public name


@dataclass(slots=True)
class Catalog:
    """Everything the gateway needs to answer list and call requests, read in one go."""

    targets: dict[int, Any] = field(default_factory=dict)
    tools: dict[str, ToolEntry] = field(default_factory=dict)
    # tenant id -> {(server id, tool or "*")}; key id -> the same, for keys narrowed by their own grants
    tenant_grants: dict[int, set[tuple[int, str]]] = field(default_factory=dict)
    key_grants: dict[int, set[tuple[int, str]]] = field(default_factory=dict)
    bundles: dict[str, frozenset[str]] = field(default_factory=dict)
    # "<server>.<prompt>" -> (server id, the prompts/list entry under its public name)
    prompts: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # URI -> every server offering it, as (server id, its resources/list entry), in server-name order.
    # Resources keep their URIs (tool results refer to them), so two servers may offer one URI.
    resources: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)

    @staticmethod
    def _covers(grants: set[tuple[int, str]] | None, server_id: int, tool: str) -> bool:
        return bool(grants) and ((server_id, tool) in grants or (server_id, ToolGrant.ALL) in grants)  # type: ignore[operator]

    def allows(self, key: KeyContext, entry: ToolEntry) -> bool:
        if not self._covers(self.tenant_grants.get(key.tenant_id), entry.server_id, entry.name):
            return False
        narrowed = self.key_grants.get(key.key_id)
        return narrowed is None or self._covers(narrowed, entry.server_id, entry.name)

    def servers_of(self, key: KeyContext) -> set[int]:
        """Servers on which the key may use at least one tool (their prompts and resources are visible)."""
        servers = {server_id for server_id, _ in self.tenant_grants.get(key.tenant_id, ())}
        narrowed = self.key_grants.get(key.key_id)
        if narrowed is not None:
            servers &= {server_id for server_id, _ in narrowed}
        return servers

    def visible_prompts(self, key: KeyContext) -> list[dict[str, Any]]:
        servers = self.servers_of(key)
        return [spec for _, (server_id, spec) in sorted(self.prompts.items()) if server_id in servers]

    def resource_offer(
        self, key: KeyContext, uri: str, servers: set[int] | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """The server a key reads ``uri`` from: of the servers it may use that offer it, the first by name."""
        if servers is None:
            servers = self.servers_of(key)
        for offer in self.resources.get(uri, ()):
            if offer[0] in servers:
                return offer
        return None

    def visible_resources(self, key: KeyContext) -> list[dict[str, Any]]:
        """One entry per URI the key can read, the one of the server ``resource_offer`` picks."""
        servers = self.servers_of(key)
        visible = (self.resource_offer(key, uri, servers) for uri in sorted(self.resources))
        return [offer[1] for offer in visible if offer is not None]

    def visible_tools(self, key: KeyContext, bundle: str | None) -> list[ToolEntry]:
        chosen = self.bundles.get(bundle) if bundle else None
        return [
            entry
            for name, entry in sorted(self.tools.items())
            if (chosen is None or name in chosen) and self.allows(key, entry)
        ]


def _catalog_load_sync() -> Catalog:
    catalog = Catalog()
    allowlist = list(SsrfAllowEntry.objects.values_list("value", flat=True))
    # In name order: where several servers offer one resource URI, the first granted one serves it.
    servers = {server.pk: server for server in UpstreamServer.objects.filter(enabled=True).order_by("name")}
    for server in servers.values():
        catalog.targets[server.pk] = upstream_target(server, allowlist)
        for prompt in server.prompts or []:
            public = f"{server.name}{TOOL_SEPARATOR}{prompt['name']}"
            catalog.prompts[public] = (server.pk, {**prompt, "name": public})
        offered = set()
        for resource in server.resources or []:
            if resource["uri"] not in offered:  # a server listing one URI twice: its first entry
                offered.add(resource["uri"])
                catalog.resources.setdefault(resource["uri"], []).append((server.pk, resource))
    for tool in UpstreamTool.objects.filter(server_id__in=servers).order_by("server_id", "name"):
        server = servers[tool.server_id]
        public = f"{server.name}{TOOL_SEPARATOR}{tool.name}"
        spec: dict[str, Any] = {"name": public, "inputSchema": tool.input_schema or {"type": "object"}}
        if tool.title:
            spec["title"] = tool.title
        if tool.description:
            spec["description"] = tool.description
        if tool.output_schema:
            spec["outputSchema"] = tool.output_schema
        if tool.annotations:
            spec["annotations"] = tool.annotations
        catalog.tools[public] = ToolEntry(public, server.pk, server.name, tool.name, spec)
    for tenant_id, key_id, server_id, tool_name in ToolGrant.objects.filter(
        server_id__in=servers, tenant__is_active=True
    ).values_list("tenant_id", "api_key_id", "server_id", "tool"):
        if key_id is None:
            catalog.tenant_grants.setdefault(tenant_id, set()).add((server_id, tool_name))
        else:
            catalog.key_grants.setdefault(key_id, set()).add((server_id, tool_name))
    for bundle in VirtualServer.objects.filter(enabled=True).prefetch_related("tools__server"):
        catalog.bundles[bundle.name] = frozenset(
            f"{tool.server.name}{TOOL_SEPARATOR}{tool.name}" for tool in bundle.tools.all()
        )
    return catalog


class CatalogCache:
    """The catalog, reloaded in the background every ``MCP_CATALOG_TTL`` seconds and on any change.

    After a change the next request waits for the reload (at most ``DB_READ_WAIT``); while
    the database is away the last catalog keeps serving.
    """

    def __init__(self) -> None:
        self.epoch = SharedEpoch("mcp-catalog")
        self._loaded: ReloadedValue[Catalog] = ReloadedValue(
            "MCP catalog", _catalog_load_sync, lambda: settings.MCP_CATALOG_TTL
        )

    def clear(self) -> None:
        self._loaded.invalidate()

    async def get(self) -> Catalog:
        if await self.epoch.moved():
            self.clear()
        catalog = await self._loaded.get()
        if catalog is None:
            raise ServiceUnavailable(
                "The MCP tool catalog cannot be loaded right now (database unavailable); retry shortly."
            )
        return catalog


catalog_cache = CatalogCache()
registry.register("mcp.catalog_cache", reset=catalog_cache.clear)


def catalog_invalidate() -> None:
    """Tell every process to reload the catalog (call after a change commits)."""
    catalog_cache.clear()
    catalog_cache.epoch.bump()
