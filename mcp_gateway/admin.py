"""Admin for upstream MCP servers, their tools, grants, virtual servers, the SSRF allow-list and recent calls."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from core.actors import actor_of, ip_of
from core.admin_services import AdminWrites, ServiceAdminMixin
from core.read_only import ReadOnlyAdminMixin
from mcp_gateway import services, ssrf
from mcp_gateway.models import SsrfAllowEntry, ToolCallEvent, ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from mcp_gateway.selectors import servers_grantable_by
from tenants.admin_forms import ClearSecretField, WriteOnlySecretField, WriteOnlySecretForm
from tenants.models import ApiKey
from tenants.roles import tenant_ids_for
from tenants.scoping import TenantScopedAdmin


class UpstreamServerForm(WriteOnlySecretForm):
    url = forms.URLField(
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text="Streamable HTTP endpoint (…/mcp) or legacy SSE URL (…/sse); empty for stdio.",
    )
    command = forms.ChoiceField(
        required=False,
        help_text="stdio only: one of the commands the operator allowed in MCP_STDIO_COMMANDS. For stdio, the "
        "credential is passed in the environment variable named in 'credential header'.",
    )
    credential = WriteOnlySecretField(help_text="Sent in the credential header, e.g. 'Bearer …'; encrypted at rest.")
    clear_credential = ClearSecretField()

    class Meta:
        model = UpstreamServer
        fields = [
            "name",
            "url",
            "transport",
            "command",
            "credential_header",
            "credential",
            "enabled",
            "tenant_self_service",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from django.conf import settings

        super().__init__(*args, **kwargs)
        names = sorted(settings.MCP_STDIO_COMMANDS)
        current = self.instance.command if self.instance.pk else ""
        if current and current not in names:  # keep showing a name the operator has since removed
            names.append(current)
        choice_field = self.fields["command"]
        assert isinstance(choice_field, forms.ChoiceField)
        choice_field.choices = [("", "—"), *((name, name) for name in names)]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        url = cleaned.get("url")
        if url and cleaned.get("transport") != UpstreamServer.Transport.STDIO and not self.has_error("url"):
            # The same check services.server_save makes, here so a refusal is a form error that keeps
            # what was typed (raised from save_model it was a 500).
            allowlist = list(SsrfAllowEntry.objects.values_list("value", flat=True))
            try:
                ssrf.url_check(url, allowlist, ssrf.resolve_sync(url))
            except ssrf.SsrfBlocked as exc:
                self.add_error("url", exc.message)
        return cleaned


class UpstreamToolInline(admin.TabularInline):
    model = UpstreamTool
    fields = ["name", "description"]
    readonly_fields = ["name", "description"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UpstreamServer)
class UpstreamServerAdmin(ServiceAdminMixin, admin.ModelAdmin):
    writes = AdminWrites("server", save=services.server_save, delete=services.server_delete, audited=services.SERVERS)
    form = UpstreamServerForm
    list_display = [
        "name",
        "endpoint",
        "transport",
        "enabled",
        "tenant_self_service",
        "health",
        "tool_count",
        "last_refresh_at",
    ]
    list_filter = ["enabled", "health", "transport", "tenant_self_service"]
    search_fields = ["name", "url"]
    readonly_fields = ["health", "last_refresh_at", "last_error", "server_info", "created_at", "updated_at"]
    inlines = [UpstreamToolInline]
    actions = ["refresh_tools"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UpstreamServer]:
        from django.db.models import Count

        return super().get_queryset(request).annotate(tool_total=Count("tools"))

    @admin.display(description="URL or command", ordering="url")
    def endpoint(self, obj: UpstreamServer) -> str:
        return f"stdio: {obj.command}" if obj.transport == UpstreamServer.Transport.STDIO else obj.url

    @admin.display(description="Tools", ordering="tool_total")
    def tool_count(self, obj: Any) -> int:
        return obj.tool_total

    def response_add(self, request: HttpRequest, obj: UpstreamServer, post_url_continue: str | None = None) -> Any:
        self._refresh(request, [obj])
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Refresh tools, resources and prompts now", permissions=["change"])
    def refresh_tools(self, request: HttpRequest, queryset: QuerySet[UpstreamServer]) -> None:
        self._refresh(request, list(queryset))

    def _refresh(self, request: HttpRequest, servers: list[UpstreamServer]) -> None:
        for server in servers:
            server = services.server_refresh(server=server, actor=actor_of(request), ip=ip_of(request))
            if server.health == UpstreamServer.Health.HEALTHY:
                count = server.tools.count()
                self.message_user(request, f"{server.name}: {count} tool(s) discovered.", messages.SUCCESS)
            else:
                self.message_user(request, f"{server.name}: unreachable — {server.last_error}", messages.ERROR)


@admin.register(UpstreamTool)
class UpstreamToolAdmin(admin.ModelAdmin):
    """Platform admins see every tool and every grant; tenant admins the tools they can grant and their own grants."""

    list_display = ["public", "server", "description", "granted_to"]
    list_filter = [("server", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description", "server__name"]
    list_select_related = ["server"]
    readonly_fields = ["server", "name", "title", "description", "input_schema", "output_schema", "annotations"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UpstreamTool]:
        queryset = super().get_queryset(request)
        grants = ToolGrant.objects.select_related("tenant", "api_key")
        if not request.user.is_superuser:
            tenants = tenant_ids_for(request.user, UpstreamTool, "view")
            queryset = queryset.filter(server__in=servers_grantable_by(tenants))
            grants = grants.filter(tenant_id__in=tenants)
        return queryset.prefetch_related(Prefetch("server__grants", queryset=grants))

    @admin.display(description="Name", ordering="name")
    def public(self, obj: UpstreamTool) -> str:
        return obj.public_name

    @admin.display(description="Who may use it")
    def granted_to(self, obj: UpstreamTool) -> str:
        who = []
        for grant in obj.server.grants.all():
            if grant.tool in (ToolGrant.ALL, obj.name):
                who.append(
                    f"{grant.tenant.slug} (key {grant.api_key.prefix}…)"
                    if grant.api_key is not None
                    else grant.tenant.slug
                )
        return ", ".join(sorted(who)) or "nobody"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


GRANT_RELATED = ("tenant", "api_key", "server")


class ToolGrantForm(forms.ModelForm):
    self_service = False  # set for tenant admins by ToolGrantAdmin.get_form

    class Meta:
        model = ToolGrant
        fields = ["tenant", "api_key", "server", "tool"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        server = cleaned.get("server")
        if self.self_service and server is not None:
            if not services.grant_within_self_service(ToolGrant(server=server, api_key=cleaned.get("api_key"))):
                raise forms.ValidationError(
                    f"'{server.name}' is not open for tenant self-service: only platform admins grant its tools "
                    "to a whole tenant. You can narrow one of your keys to tools your tenant already has."
                )
        return cleaned


@admin.register(ToolGrant)
class ToolGrantAdmin(ServiceAdminMixin, TenantScopedAdmin):
    """Tenant admins manage their tenant's grants: key narrowing always, tenant-wide grants on self-service servers."""

    writes = AdminWrites("grant", save=services.grant_save, delete=services.grant_delete, audited=services.GRANTS)

    form = ToolGrantForm
    list_display = ["tenant", "api_key", "server", "tool", "created_at"]
    list_filter = [("server", admin.RelatedOnlyFieldListFilter), ("tenant", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["tenant", "api_key", "server"]
    autocomplete_fields = ["tenant"]
    raw_id_fields = ["api_key"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form: Any = super().get_form(request, obj, change, **kwargs)
        form.self_service = not request.user.is_superuser
        return form

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if not request.user.is_superuser:
            tenants = self.allowed_tenants(request, "add") or set()
            if db_field.name == "api_key":
                kwargs["queryset"] = ApiKey.objects.filter(tenant_id__in=tenants)
            elif db_field.name == "server":
                kwargs["queryset"] = servers_grantable_by(tenants)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def _may(self, request: HttpRequest, obj: Any, action: str) -> bool:
        if not super()._may(request, obj, action):
            return False
        # A platform-made tenant-wide grant on a server closed to self-service is read-only to tenant admins.
        return action == "view" or obj is None or request.user.is_superuser or services.grant_within_self_service(obj)

    def service_kwargs(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().service_kwargs(request), "self_service": not request.user.is_superuser}

    def save_model(self, request: HttpRequest, obj: ToolGrant, form: Any, change: bool) -> None:
        self.check_tenant(request, obj.tenant_id, "change" if change else "add")
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: ToolGrant) -> None:
        self.check_tenant(request, obj.tenant_id, "delete")
        super().delete_model(request, obj)

    def deletable(self, request: HttpRequest, queryset: QuerySet[ToolGrant]) -> list[ToolGrant]:
        grants = list(self.scope(queryset, self.allowed_tenants(request, "delete")).select_related(*GRANT_RELATED))
        if not request.user.is_superuser and not all(services.grant_within_self_service(g) for g in grants):
            # Refuse the whole selection before deleting any of it.
            raise PermissionDenied("Only platform admins remove tenant-wide grants of servers closed to self-service.")
        return grants


@admin.register(VirtualServer)
class VirtualServerAdmin(ServiceAdminMixin, admin.ModelAdmin):
    writes = AdminWrites("bundle", delete=services.virtual_server_delete, audited=services.BUNDLES)
    list_display = ["name", "enabled", "description", "updated_at"]
    filter_horizontal = ["tools"]

    def save_model(self, request: HttpRequest, obj: VirtualServer, form: Any, change: bool) -> None:
        tools = list(form.cleaned_data.get("tools") or [])
        services.virtual_server_save(bundle=obj, tools=tools, **self.service_kwargs(request))

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The tools were set (and audited) by the service in save_model."""


@admin.register(SsrfAllowEntry)
class SsrfAllowEntryAdmin(ServiceAdminMixin, admin.ModelAdmin):
    writes = AdminWrites(
        "entry", save=services.allow_entry_save, delete=services.allow_entry_delete, audited=services.ALLOW_ENTRIES
    )
    list_display = ["value", "note", "created_at"]


@admin.register(ToolCallEvent)
class ToolCallEventAdmin(ReadOnlyAdminMixin, TenantScopedAdmin):
    """Recent tool calls: platform admins see all, tenant admins and auditors their tenants' calls."""

    tenant_lookups = ("tenant_id",)
    list_display = ["created_at", "actor", "tenant_id", "target", "outcome", "duration", "error"]
    list_filter = ["outcome"]
    search_fields = ["target", "actor"]
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ToolCallEvent]:
        return super().get_queryset(request).filter(action="mcp.tool_call")

    @admin.display(description="Duration (ms)")
    def duration(self, obj: ToolCallEvent) -> Any:
        return obj.details.get("duration_ms")

    @admin.display(description="Error")
    def error(self, obj: ToolCallEvent) -> str:
        return obj.details.get("error", "")
