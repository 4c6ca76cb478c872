"""App config for the MCP gateway (label ``mcp`` so tables and the admin read "mcp")."""

from __future__ import annotations

from django.apps import AppConfig


class McpGatewayConfig(AppConfig):
    name = "mcp_gateway"
    label = "mcp"
    verbose_name = "MCP gateway"

    def ready(self) -> None:
        from mcp_gateway.tasks import list_changed
        from mcp_gateway.upstream import pool

        pool.on_list_changed = list_changed
