"""App config for the MCP gateway (label ``mcp`` so tables and the admin read "mcp")."""

from __future__ import annotations

from django.apps import AppConfig


class McpGatewayConfig(AppConfig):
    name = "mcp_gateway"
    label = "mcp"
    verbose_name = "MCP gateway"
