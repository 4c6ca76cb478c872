"""Config as code for the MCP gateway: one ``mcp_servers`` entry and its tool grants, applied idempotently."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from llm_platform.config_fields import ConfigError
from llm_platform.config_report import ConfigReport, validation_error
from llm_platform.config_schema import GrantEntry, McpServerEntry
from mcp_gateway import services as mcp_services
from mcp_gateway.models import ToolGrant, UpstreamServer
from tenants.models import ApiKey, Tenant


def _grant_rows(grants: list[GrantEntry], where: str) -> set[tuple[int, int | None, str]]:
    """(tenant id, key id or None, tool) for each tool of each grant, its tenant and key looked up."""
    wanted: set[tuple[int, int | None, str]] = set()
    for index, grant in enumerate(grants):
        here = f"{where}.grants[{index}]"
        tenant = Tenant.objects.filter(slug=grant.tenant).first()
        if tenant is None:
            raise ConfigError(f"{here}.tenant: no tenant '{grant.tenant}' (declare it under tenants)")
        key_id = None
        if grant.key is not None:
            key = ApiKey.objects.filter(tenant=tenant, name=grant.key, revoked_at__isnull=True).first()
            if key is None:
                raise ConfigError(f"{here}.key: tenant '{grant.tenant}' has no active key named '{grant.key}'")
            key_id = key.pk
        wanted |= {(tenant.pk, key_id, tool) for tool in grant.tools}
    return wanted


def mcp_server_apply(entry: McpServerEntry, where: str, actor: str, report: ConfigReport) -> UpstreamServer | None:
    """One upstream MCP server and its grants; the grants listed (if any) are the server's grants afterwards.

    Returns the server when it was created or changed (its tools are discovered after the commit).
    """
    name = entry.name
    desired = {
        "url": entry.url,
        "command": entry.command,
        "transport": entry.transport,
        "credential": entry.credential,
        "credential_header": entry.credential_header,
        "enabled": entry.enabled,
        "tenant_self_service": entry.tenant_self_service,
    }
    report.declare(("mcp server", name), where, f"mcp server {name!r}")
    server = UpstreamServer.objects.filter(name=name).first()
    label = f"mcp server {name}"
    touched: UpstreamServer | None = None
    if server is None or any(getattr(server, k) != v for k, v in desired.items()):
        is_new = server is None
        server = server or UpstreamServer(name=name)
        for field_name, value in desired.items():
            setattr(server, field_name, value)
        try:
            mcp_services.server_save(server=server, actor=actor)
        except ValidationError as exc:
            raise validation_error(where, exc) from exc
        (report.created if is_new else report.updated).append(label)
        touched = server
    else:
        report.unchanged.append(label)
    if not entry.grants_given():
        return touched  # grants are left to the admin (and, on a self-service server, to tenant admins)
    wanted = _grant_rows(entry.grants or [], where)
    existing = {(g.tenant_id, g.api_key_id, g.tool): g for g in ToolGrant.objects.filter(server=server)}
    for tenant_id, key_id, tool in sorted(wanted - set(existing), key=str):
        mcp_services.grant_save(
            grant=ToolGrant(tenant_id=tenant_id, api_key_id=key_id, server=server, tool=tool), actor=actor
        )
        report.created.append(f"mcp grant {name}.{tool} → tenant {tenant_id}" + (f" key {key_id}" if key_id else ""))
    for stale in set(existing) - wanted:
        mcp_services.grant_delete(grant=existing[stale], actor=actor)
        report.updated.append(f"mcp grant {name}.{stale[2]} removed from tenant {stale[0]}")
    return touched
