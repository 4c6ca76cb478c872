"""State changes to upstream servers, tools, grants and virtual servers; each writes its audit event."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record
from core.changes import AuditedEntity, snapshot
from mcp_gateway import ssrf
from mcp_gateway.models import SsrfAllowEntry, ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from mcp_gateway.selectors import catalog_invalidate, upstream_target

SERVER_AUDIT_FIELDS = ("name", "url", "transport", "command", "credential_header", "enabled", "tenant_self_service")


def _snapshot(server: UpstreamServer) -> dict[str, Any]:
    values = snapshot(server, SERVER_AUDIT_FIELDS)
    values["credential"] = "(set)" if server.credential else ""
    return values


def _allowlist() -> list[str]:
    return list(SsrfAllowEntry.objects.values_list("value", flat=True))


SERVERS = AuditedEntity[UpstreamServer](
    "mcp.server", _snapshot, lambda server: f"mcp_server:{server.name}", on_commit=catalog_invalidate
)


def server_save(*, server: UpstreamServer, actor: str, ip: str | None = None) -> UpstreamServer:
    """Create or change an upstream server; its URL must pass the SSRF check."""
    with SERVERS.saving(server, actor=actor, ip=ip) as change:
        server.full_clean()
        if server.transport != UpstreamServer.Transport.STDIO:
            try:
                ssrf.url_check(server.url, _allowlist(), ssrf.resolve_sync(server.url))
            except ssrf.SsrfBlocked as exc:
                raise ValidationError({"url": exc.message}) from exc
        if change.stored is not None and change.stored.credential != server.credential:
            change.extra_changes["credential"] = {"before": change.before["credential"], "after": "(changed)"}
        change.save()
    return server


def server_delete(*, server: UpstreamServer, actor: str, ip: str | None = None) -> None:
    SERVERS.delete(server, actor=actor, ip=ip)


def server_refresh(*, server: UpstreamServer, actor: str, ip: str | None = None) -> UpstreamServer:
    """Discover the server's tools, resources and prompts now and replace the cached ones.

    The network round trip happens outside any transaction; the result (or the failure,
    as the server's health) is then written with its audit event in one transaction.
    """
    from mcp_gateway.upstream import catalog_fetch_sync

    target = upstream_target(server, _allowlist())
    try:
        catalog = catalog_fetch_sync(target)
    except Exception as exc:  # any failure is the server's health, reported to the admin
        error = str(exc) or type(exc).__name__
        with transaction.atomic():
            UpstreamServer.objects.filter(pk=server.pk).update(
                health=UpstreamServer.Health.UNREACHABLE, last_error=error[:2000], last_refresh_at=timezone.now()
            )
            audit_record(
                actor=actor,
                action="mcp.server.refresh",
                target=f"mcp_server:{server.name}",
                outcome=AuditEvent.Outcome.FAILURE,
                ip=ip,
                details={"error": error[:500]},
            )
        server.refresh_from_db()
        transaction.on_commit(catalog_invalidate)
        return server
    with transaction.atomic():
        existing = {tool.name: tool for tool in UpstreamTool.objects.filter(server=server)}
        seen = set()
        added, changed = [], []
        for spec in catalog["tools"]:
            name = spec["name"]
            seen.add(name)
            fields = {
                "title": spec.get("title") or "",
                "description": spec.get("description") or "",
                "input_schema": spec.get("inputSchema") or {"type": "object"},
                "output_schema": spec.get("outputSchema"),
                "annotations": spec.get("annotations"),
            }
            tool = existing.get(name)
            if tool is None:
                UpstreamTool.objects.create(server=server, name=name, **fields)
                added.append(name)
            elif any(getattr(tool, key) != value for key, value in fields.items()):
                for key, value in fields.items():
                    setattr(tool, key, value)
                tool.save()
                changed.append(name)
        removed = sorted(set(existing) - seen)
        UpstreamTool.objects.filter(server=server, name__in=removed).delete()
        server.health = UpstreamServer.Health.HEALTHY
        server.last_error = ""
        server.last_refresh_at = timezone.now()
        server.server_info = {"protocol_version": catalog["protocol_version"], **catalog["server_info"]}
        server.resources = catalog["resources"]
        server.prompts = catalog["prompts"]
        UpstreamServer.objects.filter(pk=server.pk).update(
            health=server.health,
            last_error="",
            last_refresh_at=server.last_refresh_at,
            server_info=server.server_info,
            resources=server.resources,
            prompts=server.prompts,
        )
        audit_record(
            actor=actor,
            action="mcp.server.refresh",
            target=f"mcp_server:{server.name}",
            ip=ip,
            details={"added": added, "changed": changed, "removed": removed, "tools": len(seen)},
        )
        transaction.on_commit(catalog_invalidate)
    return server


def _grant_snapshot(grant: ToolGrant) -> dict[str, Any]:
    return {
        "tenant": grant.tenant.slug,
        "api_key": grant.api_key.prefix if grant.api_key is not None else None,
        "server": grant.server.name,
        "tool": grant.tool,
    }


def grant_within_self_service(grant: ToolGrant) -> bool:
    """Whether a tenant admin may make, change or remove ``grant``.

    Narrowing one of the tenant's keys always: a key never gets more than its tenant has.
    A tenant-wide grant only on a server a platform admin opened for tenant self-service.
    """
    return grant.api_key_id is not None or grant.server.tenant_self_service


def _self_service_check(grant: ToolGrant | None) -> None:
    if grant is not None and not grant_within_self_service(grant):
        raise PermissionDenied(
            f"Only platform admins grant tools of '{grant.server.name}' to a whole tenant "
            "(it is not open for tenant self-service)."
        )


GRANTS = AuditedEntity[ToolGrant](
    "mcp.grant", _grant_snapshot, lambda g: f"mcp_grant:{g.pk}", lambda g: g.tenant_id, on_commit=catalog_invalidate
)


def grant_save(*, grant: ToolGrant, actor: str, ip: str | None = None, self_service: bool = False) -> ToolGrant:
    """Create or change a grant; ``self_service`` (a tenant admin acting) limits it to what tenants may grant."""
    with GRANTS.saving(grant, actor=actor, ip=ip) as change:
        grant.full_clean()
        if self_service:
            _self_service_check(change.stored)
            _self_service_check(grant)
        change.details["self_service"] = self_service
        change.save()
    return grant


def grant_delete(*, grant: ToolGrant, actor: str, ip: str | None = None, self_service: bool = False) -> None:
    if self_service:
        _self_service_check(grant)
    GRANTS.delete(grant, actor=actor, ip=ip, details={"self_service": self_service})


def _bundle_snapshot(bundle: VirtualServer) -> dict[str, Any]:
    return {
        "name": bundle.name,
        "enabled": bundle.enabled,
        "tools": sorted(str(tool) for tool in bundle.tools.select_related("server")),
    }


BUNDLES = AuditedEntity[VirtualServer](
    "mcp.virtual_server",
    _bundle_snapshot,
    lambda b: f"mcp_virtual_server:{b.name}",
    on_commit=catalog_invalidate,
    delete_keeps_before=False,
)


def virtual_server_save(
    *, bundle: VirtualServer, tools: list[UpstreamTool] | None = None, actor: str, ip: str | None = None
) -> VirtualServer:
    with BUNDLES.saving(bundle, actor=actor, ip=ip) as change:
        bundle.full_clean()
        change.save()
        if tools is not None:
            bundle.tools.set(tools)
    return bundle


def virtual_server_delete(*, bundle: VirtualServer, actor: str, ip: str | None = None) -> None:
    BUNDLES.delete(bundle, actor=actor, ip=ip)


ALLOW_ENTRIES = AuditedEntity[SsrfAllowEntry](
    "mcp.ssrf_allow",
    ("value", "note"),
    lambda e: f"ssrf_allow:{e.value}",
    on_commit=catalog_invalidate,
    delete_keeps_before=False,
)


def allow_entry_save(*, entry: SsrfAllowEntry, actor: str, ip: str | None = None) -> SsrfAllowEntry:
    return ALLOW_ENTRIES.save(entry, actor=actor, ip=ip)


def allow_entry_delete(*, entry: SsrfAllowEntry, actor: str, ip: str | None = None) -> None:
    ALLOW_ENTRIES.delete(entry, actor=actor, ip=ip)
