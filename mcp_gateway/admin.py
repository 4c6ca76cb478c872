"""Admin for upstream MCP servers, their tools, grants, virtual servers, the SSRF allow-list and recent calls."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from mcp_gateway import services
from mcp_gateway.models import SsrfAllowEntry, ToolCallEvent, ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from tenants.admin import actor_of, ip_of
from tenants.admin_forms import ClearSecretField, WriteOnlySecretField, WriteOnlySecretForm


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
        fields = ["name", "url", "transport", "command", "credential_header", "credential", "enabled"]

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
class UpstreamServerAdmin(admin.ModelAdmin):
    form = UpstreamServerForm
    list_display = ["name", "endpoint", "transport", "enabled", "health", "tool_count", "last_refresh_at"]
    list_filter = ["enabled", "health", "transport"]
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

    def save_model(self, request: HttpRequest, obj: UpstreamServer, form: Any, change: bool) -> None:
        services.server_save(server=obj, actor=actor_of(request), ip=ip_of(request))

    def response_add(self, request: HttpRequest, obj: UpstreamServer, post_url_continue: str | None = None) -> Any:
        self._refresh(request, [obj])
        return super().response_add(request, obj, post_url_continue)

    def delete_model(self, request: HttpRequest, obj: UpstreamServer) -> None:
        services.server_delete(server=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UpstreamServer]) -> None:
        for server in queryset:
            services.server_delete(server=server, actor=actor_of(request), ip=ip_of(request))

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
    list_display = ["public", "server", "description", "granted_to"]
    list_filter = ["server"]
    search_fields = ["name", "description", "server__name"]
    list_select_related = ["server"]
    readonly_fields = ["server", "name", "title", "description", "input_schema", "output_schema", "annotations"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UpstreamTool]:
        return super().get_queryset(request).prefetch_related("server__grants__tenant", "server__grants__api_key")

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


@admin.register(ToolGrant)
class ToolGrantAdmin(admin.ModelAdmin):
    list_display = ["tenant", "api_key", "server", "tool", "created_at"]
    list_filter = ["server", "tenant"]
    list_select_related = ["tenant", "api_key", "server"]
    autocomplete_fields = ["tenant"]
    raw_id_fields = ["api_key"]

    def save_model(self, request: HttpRequest, obj: ToolGrant, form: Any, change: bool) -> None:
        services.grant_save(grant=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: ToolGrant) -> None:
        services.grant_delete(grant=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ToolGrant]) -> None:
        for grant in queryset.select_related("tenant", "api_key", "server"):
            services.grant_delete(grant=grant, actor=actor_of(request), ip=ip_of(request))


@admin.register(VirtualServer)
class VirtualServerAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "description", "updated_at"]
    filter_horizontal = ["tools"]

    def save_model(self, request: HttpRequest, obj: VirtualServer, form: Any, change: bool) -> None:
        services.virtual_server_save(
            bundle=obj, tools=list(form.cleaned_data.get("tools") or []), actor=actor_of(request), ip=ip_of(request)
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The tools were set (and audited) by the service in save_model."""

    def delete_model(self, request: HttpRequest, obj: VirtualServer) -> None:
        services.virtual_server_delete(bundle=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[VirtualServer]) -> None:
        for bundle in queryset:
            services.virtual_server_delete(bundle=bundle, actor=actor_of(request), ip=ip_of(request))


@admin.register(SsrfAllowEntry)
class SsrfAllowEntryAdmin(admin.ModelAdmin):
    list_display = ["value", "note", "created_at"]

    def save_model(self, request: HttpRequest, obj: SsrfAllowEntry, form: Any, change: bool) -> None:
        services.allow_entry_save(entry=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: SsrfAllowEntry) -> None:
        services.allow_entry_delete(entry=obj, actor=actor_of(request), ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[SsrfAllowEntry]) -> None:
        for entry in queryset:
            services.allow_entry_delete(entry=entry, actor=actor_of(request), ip=ip_of(request))


@admin.register(ToolCallEvent)
class ToolCallEventAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
