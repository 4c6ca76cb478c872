"""Upstream MCP servers, their cached tools, tenant grants, virtual servers and the SSRF allow-list."""

from __future__ import annotations

import ipaddress
import re

from django.core.exceptions import ValidationError
from django.db import models

from audit.models import AuditEvent
from core.urls import url_credentials as core_url_credentials
from tenants.models import ApiKey, Tenant
from tenants.vault import EncryptedTextField

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NAME_HELP = "Lower-case letters, digits, '-' and '_'; tools are exposed as 'NAME.TOOL' (e.g. 'files.read')."
TOOL_SEPARATOR = "."


# Query parameter names that carry a credential: such a URL would be stored and audited in clear.
SECRET_QUERY_RE = re.compile(r"(key|token|secret|password|passwd|credential|auth|signature|sig)", re.IGNORECASE)
RESERVED_NAMES = frozenset({"sse", "messages"})  # paths of the legacy transport under /mcp/
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")


def url_credentials(url: str) -> str:
    """What in an upstream server's ``url`` is a credential, or ''."""
    return core_url_credentials(url, is_secret=lambda name: SECRET_QUERY_RE.search(name) is not None)


def validate_name(value: str) -> None:
    if not NAME_RE.match(value):
        raise ValidationError(f"'{value}' is not a valid name. {NAME_HELP}")
    if value in RESERVED_NAMES:
        raise ValidationError(f"'{value}' is reserved; choose another name.")


class UpstreamServer(models.Model):
    """An MCP server the gateway federates; its tools are exposed as ``<name>.<tool>``.

    ``credential`` is sent to the upstream in ``credential_header`` on every request and
    is encrypted at rest; the clients' own API keys are never forwarded. A stdio server is
    a local process started from one of the operator's ``MCP_STDIO_COMMANDS`` (by name);
    its credential, if any, is passed in the environment variable ``credential_header``.
    """

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
        SSE = "sse", "Legacy HTTP+SSE"
        STDIO = "stdio", "Local process (stdio)"

    class Health(models.TextChoices):
        UNKNOWN = "unknown", "Not checked yet"
        HEALTHY = "healthy", "Healthy"
        UNREACHABLE = "unreachable", "Unreachable"

    name = models.CharField(max_length=63, unique=True, validators=[validate_name], help_text=NAME_HELP)
    url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Streamable HTTP endpoint (…/mcp) or legacy SSE URL (…/sse); empty for stdio.",
    )
    transport = models.CharField(max_length=20, choices=Transport.choices, default=Transport.STREAMABLE_HTTP)
    command = models.CharField(
        max_length=63,
        blank=True,
        help_text="stdio only: the name of a command the operator allowed (MCP_STDIO_COMMANDS).",
    )
    credential_header = models.CharField(max_length=100, default="Authorization", blank=True)
    credential = EncryptedTextField(blank=True, help_text="Header value, e.g. 'Bearer …'. Encrypted at rest.")
    enabled = models.BooleanField(default=True)
    tenant_self_service = models.BooleanField(
        default=False,
        help_text="Tenant admins may grant this server's tools to their own tenant. "
        "Without it only platform admins grant them (tenant admins can still narrow their keys).",
    )
    health = models.CharField(max_length=20, choices=Health.choices, default=Health.UNKNOWN, editable=False)
    last_refresh_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    server_info = models.JSONField(default=dict, blank=True, editable=False)
    resources = models.JSONField(default=list, blank=True, editable=False, help_text="Cached resources/list.")
    prompts = models.JSONField(default=list, blank=True, editable=False, help_text="Cached prompts/list.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "upstream MCP server"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.conf import settings

        if self.transport == self.Transport.STDIO:
            if self.command not in settings.MCP_STDIO_COMMANDS:
                allowed = ", ".join(sorted(settings.MCP_STDIO_COMMANDS)) or "none are configured"
                raise ValidationError(
                    {"command": f"Choose one of the operator's stdio commands (MCP_STDIO_COMMANDS: {allowed})."}
                )
            if self.url:
                raise ValidationError({"url": "A stdio server has no URL; leave it empty."})
            if self.credential and not ENV_NAME_RE.match(self.credential_header or ""):
                raise ValidationError(
                    {
                        "credential_header": "For stdio, the credential is passed in this environment variable: "
                        "use upper-case letters, digits and '_' (e.g. API_TOKEN)."
                    }
                )
        else:
            if not self.url:
                raise ValidationError({"url": "Enter the server's URL."})
            if self.command:
                raise ValidationError({"command": "Only stdio servers run a command; leave it empty."})
            where = url_credentials(self.url)
            if where:
                raise ValidationError(
                    {
                        "url": f"The URL carries a credential ({where}); the URL is stored and audited in clear. "
                        "Put the credential in 'credential' (sent in 'credential header'), which is encrypted."
                    }
                )


class UpstreamTool(models.Model):
    """A tool discovered on an upstream server (refreshed on change and on demand)."""

    server = models.ForeignKey(UpstreamServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict)
    output_schema = models.JSONField(null=True, blank=True)
    annotations = models.JSONField(null=True, blank=True)
    discovered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_unique_server_name")]

    def __str__(self) -> str:
        return f"{self.server.name}{TOOL_SEPARATOR}{self.name}"

    @property
    def public_name(self) -> str:
        return str(self)


class ToolGrant(models.Model):
    """Lets a tenant (or narrows one of its keys) use one tool of a server, or all of them (``*``).

    A tenant sees the tools its tenant-wide grants cover. A key that has grants of its own
    is narrowed to the tools covered by both its grants and its tenant's.
    """

    ALL = "*"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tool_grants")
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="tool_grants",
        help_text="Empty: the whole tenant. Set: narrows this key to these grants.",
    )
    server = models.ForeignKey(UpstreamServer, on_delete=models.CASCADE, related_name="grants")
    tool = models.CharField(max_length=200, default=ALL, help_text="Tool name on the server, or * for all its tools.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug", "server__name", "tool"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "server", "tool"],
                condition=models.Q(api_key__isnull=True),
                name="mcp_grant_unique_tenant",
            ),
            models.UniqueConstraint(
                fields=["api_key", "server", "tool"],
                condition=models.Q(api_key__isnull=False),
                name="mcp_grant_unique_key",
            ),
        ]

    def __str__(self) -> str:
        who = f"key {self.api_key.prefix}…" if self.api_key is not None else f"tenant {self.tenant.slug}"
        return f"{who} → {self.server.name}{TOOL_SEPARATOR}{self.tool}"

    def clean(self) -> None:
        if self.api_key is not None and self.tenant_id and self.api_key.tenant_id != self.tenant_id:
            raise ValidationError({"api_key": "The key belongs to another tenant."})


class VirtualServer(models.Model):
    """A named bundle of chosen tools from several upstreams, served at ``/mcp/<name>``."""

    name = models.CharField(max_length=63, unique=True, validators=[validate_name], help_text=NAME_HELP)
    description = models.TextField(blank=True)
    tools = models.ManyToManyField(UpstreamTool, related_name="virtual_servers", blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SsrfAllowEntry(models.Model):
    """A host name or CIDR that upstream URLs may point at even though it is private or loopback."""

    value = models.CharField(max_length=255, unique=True, help_text="Host name (exact) or CIDR, e.g. 10.0.0.0/8.")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["value"]
        verbose_name = "SSRF allow-list entry"
        verbose_name_plural = "SSRF allow-list"

    def __str__(self) -> str:
        return self.value

    def clean(self) -> None:
        value = self.value.strip().lower()
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValidationError({"value": f"Not a valid CIDR: {exc}"}) from exc
        elif not re.match(r"^[a-z0-9.\-:\[\]]+$", value):
            raise ValidationError({"value": "Enter a host name, an IP address or a CIDR."})
        self.value = value


class ToolCallEvent(AuditEvent):
    """The audit events of tool calls, for the admin's "recent calls" page (no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "tool call"
        verbose_name_plural = "recent tool calls"
