"""App config for the MCP gateway (label ``mcp`` so tables and the admin read "mcp")."""

from __future__ import annotations

from django.apps import AppConfig


class McpGatewayConfig(AppConfig):
    name = "mcp_gateway"
    label = "mcp"
    verbose_name = "MCP gateway"

    def ready(self) -> None:
        from core.permissions import AUDITOR, TENANT_ADMIN, roles_grant

        roles_grant(
            {
                # Their tenant's grants (tenant-wide ones only on self-service servers, see
                # mcp_gateway.services.grant_within_self_service), the tools they can grant, recent calls.
                TENANT_ADMIN: {
                    "mcp.toolgrant": {"view", "add", "change", "delete"},
                    "mcp.upstreamtool": {"view"},
                    "mcp.toolcallevent": {"view"},
                },
                AUDITOR: {"mcp.toolgrant": {"view"}, "mcp.toolcallevent": {"view"}},
            }
        )
        from mcp_gateway.tasks import list_changed
        from mcp_gateway.upstream import pool

        pool.on_list_changed = list_changed
