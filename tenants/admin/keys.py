"""Admin for API keys: status and rotation filters, audited create, change, revoke and delete."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from core.admin_services import AdminWrites
from tenants import rotation, services
from tenants.admin.base import QuotaFormsetMixin, QuotaInline, TenantServiceAdmin
from tenants.admin.key_forms import KEY_EDITABLE_FIELDS, ApiKeyForm
from tenants.models import ApiKey
from tenants.rotation_admin import KeyRotationAdminMixin

# Shown on a stored key around the editable fields: what it is, then what happened to it.
KEY_STATUS_FIELDS = ["prefix", "status_display"]
KEY_HISTORY_FIELDS = ["rotation_display", "rotated_from", "created_at", "revoked_at", "last_used_at", "created_by"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["name", "prefix", "status_badge", "created_at", "expires_at", "last_used_at"]
    readonly_fields = ["name", "prefix", "status_badge", "created_at", "expires_at", "last_used_at"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ["-created_at"]

    @admin.display(description="Status")
    def status_badge(self, obj: ApiKey) -> str:
        return status_badge(obj)


def status_badge(obj: ApiKey) -> str:
    colour = {"active": "#2e7d32", "expired": "#8d6e63", "revoked": "#c62828"}[obj.status]
    return format_html('<b style="color:{}">{}</b>', colour, ApiKey.Status(obj.status).label)


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, label in ApiKey.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == ApiKey.Status.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == ApiKey.Status.EXPIRED:
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == ApiKey.Status.ACTIVE:
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


class KeyRotationFilter(admin.SimpleListFilter):
    title = "rotation"
    parameter_name = "rotation"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("due", "Due now"), ("grace", "Rotated, in grace period"), ("pickup", "New secret to collect")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "due":
            return queryset.filter(pk__in=rotation.api_keys_rotation_due().values("pk"))
        if self.value() == "grace":
            return queryset.filter(pk__in=rotation.api_keys_in_grace().values("pk"))
        if self.value() == "pickup":
            return queryset.exclude(pending_secret="")
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(KeyRotationAdminMixin, QuotaFormsetMixin, TenantServiceAdmin):
    """Tenant admins manage every key of their tenants; developers create keys and manage the ones they created."""

    writes = AdminWrites("api_key", delete=services.api_key_delete, audited=services.API_KEYS)

    form = ApiKeyForm
    creator_field = "created_by"
    list_display = [
        "name",
        "prefix_display",
        "tenant",
        "status_display",
        "rotation_display",
        "created_at",
        "expires_at",
        "last_used_at",
    ]
    list_filter = [KeyStatusFilter, KeyRotationFilter, ("tenant", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["tenant"]
    search_fields = ["name", "prefix", "tenant__slug"]
    readonly_fields = [*KEY_STATUS_FIELDS, *KEY_HISTORY_FIELDS]
    autocomplete_fields = ["tenant"]
    actions = ["revoke_keys", "rotate_keys"]
    inlines = [QuotaInline]
    show_full_result_count = False

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form: Any = super().get_form(request, obj, change, **kwargs)
        form.acting_user = request.user
        return form

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:  # type: ignore[override]
        if obj is None:
            return ["tenant", "name", *KEY_EDITABLE_FIELDS]
        return ["tenant", "name", *KEY_STATUS_FIELDS, *KEY_EDITABLE_FIELDS, *KEY_HISTORY_FIELDS]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # A key never moves between tenants: that would hand one tenant's secret to another.
        return [*self.readonly_fields, "tenant"] if obj is not None else []

    @admin.display(description="Key", ordering="prefix")
    def prefix_display(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="Status")
    def status_display(self, obj: ApiKey) -> str:
        return status_badge(obj)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        self.check_tenant(request, obj.tenant_id, "change" if change else "add")
        if change:
            services.api_key_update(api_key=obj, **self.service_kwargs(request))
            return
        editable = {name: getattr(obj, name) for name in KEY_EDITABLE_FIELDS}
        api_key, secret = services.api_key_create(
            tenant=obj.tenant, name=obj.name, **editable, created_by=request.user, **self.service_kwargs(request)
        )
        obj.pk = api_key.pk
        obj.prefix = api_key.prefix
        request._new_api_key_secret = secret  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, "_new_api_key_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "api_key": obj,
            "secret": secret,
            "title": "API key created",
        }
        response = TemplateResponse(request, "admin/tenants/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> TemplateResponse | None:
        allowed = self.scoped(request, queryset, "change")
        if request.POST.get("post") != "yes":
            # A revoked key fails its next request and cannot come back: say which ones, and ask.
            context = {
                **self.admin_site.each_context(request),
                "title": "Revoke API keys?",
                "opts": self.model._meta,
                "revocable": list(allowed.filter(revoked_at__isnull=True).select_related("tenant")),
                "selected": list(queryset.values_list("pk", flat=True)),
                "left_alone": queryset.count() - allowed.filter(revoked_at__isnull=True).count(),
            }
            return TemplateResponse(request, "admin/tenants/apikey/revoke_confirm.html", context)
        revoked = 0
        for api_key in allowed.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key, **self.service_kwargs(request))
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
        refused = queryset.count() - allowed.count()
        if refused:
            self.message_user(
                request,
                f"{refused} selected key(s) left alone: developers may only revoke the keys they created.",
                messages.WARNING,
            )
        return None
