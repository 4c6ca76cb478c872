"""Admin for tenants and API keys; every write goes through tenants.services (and so is audited)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from audit.admin import AuditEventAdmin
from audit.models import AuditEvent
from core.actors import actor_of, ip_of
from tenants import rotation, services
from tenants.models import KEY_SCOPES, ApiKey, Membership, Quota, Tenant
from tenants.roles import is_platform_admin, scopes_grantable, tenant_ids_for
from tenants.rotation_admin import KeyRotationAdminMixin
from tenants.scoping import TenantScopedAdmin


class ModelNamesField(forms.CharField):
    """A JSON list of model names, edited as comma-separated text."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]  # the field holds a list
        text = super().to_python(value) or ""
        names = [name.strip() for name in text.split(",") if name.strip()]
        for name in names:
            if len(name) > 200:
                raise forms.ValidationError("A model name is at most 200 characters.")
            if "\x00" in name:
                raise forms.ValidationError("A model name cannot hold the NUL character.")
        return list(dict.fromkeys(names))


class ApiKeyForm(forms.ModelForm):
    acting_user: Any = None  # set per request by ApiKeyAdmin.get_form

    allowed_models = ModelNamesField(
        required=False,
        help_text="Comma-separated public model names this key may use; leave empty to allow every model.",
        widget=forms.TextInput(attrs={"size": 80}),
    )

    scopes = forms.MultipleChoiceField(
        required=False,
        choices=[(scope, scope) for scope in KEY_SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Endpoints this key may call; none ticked means all but audit.",
    )

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", "allowed_models", "scopes", "expires_at", "max_age_days"]
        help_texts = {
            "tenant": "Every key is bound by its tenant's quotas; a tenant admin can add tighter limits for one key.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scopes = self.fields.get("scopes")
        if isinstance(scopes, forms.MultipleChoiceField):
            # Offer only what this person may grant somewhere, plus what the key already has
            # (so saving it does not silently drop a scope someone else granted).
            offered = set(self._grantable(self.instance.tenant_id if self.instance.pk else None))
            offered |= set(self.instance.scopes or ())
            scopes.choices = [(scope, scope) for scope in KEY_SCOPES if scope in offered]

    def _grantable(self, tenant_id: int | None) -> tuple[str, ...]:
        """In the key's tenant, or (a new key) in any tenant this person may add keys to."""
        if tenant_id is not None or is_platform_admin(self.acting_user):
            return scopes_grantable(self.acting_user, tenant_id)
        tenants = getattr(self.fields.get("tenant"), "queryset", None)
        tenant_ids = tenants.values_list("pk", flat=True) if tenants is not None else ()
        return tuple({scope for tenant in tenant_ids for scope in scopes_grantable(self.acting_user, tenant)})

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and self.instance.pk is None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        tenant = cleaned.get("tenant") if self.instance.pk is None else self.instance.tenant
        if tenant is not None and "scopes" in cleaned:
            refused = services.api_key_scopes_refused(
                acting_user=self.acting_user,
                tenant_id=tenant.pk,
                scopes=cleaned["scopes"],
                before=ApiKey.objects.get(pk=self.instance.pk).scopes if self.instance.pk else (),
            )
            if refused:
                self.add_error(
                    "scopes",
                    f"You may not give a key of {tenant.slug} the scope(s) {', '.join(refused)}: a key may only read "
                    "what you may see yourself.",
                )
        return cleaned


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


class QuotaInline(admin.TabularInline):
    """Key quotas: editable by whoever may change quotas in the key's tenant."""

    model = Quota
    fk_name = "api_key"
    extra = 0
    fields = ["model", *Quota.LIMIT_FIELDS, "budget_duration"]
    verbose_name_plural = "Quotas (empty fields mean no limit; every matching quota applies)"

    def _may(self, request: HttpRequest, obj: Any, action: str) -> bool:
        if request.user.is_superuser:
            return True
        return obj is not None and obj.tenant_id in tenant_ids_for(request.user, Quota, action)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._may(request, obj, "add")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._may(request, obj, "change")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may(request, obj, "delete")


class TenantQuotaInline(QuotaInline):
    """A tenant's own quotas are set by platform admins; its members can read, not raise, them."""

    fk_name = "tenant"

    def _may(self, request: HttpRequest, obj: Any, action: str) -> bool:
        return request.user.is_superuser


class QuotaFormsetMixin:
    """Quota rows edited inline are saved through the audited services, like everything else."""

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Quota:
            super().save_formset(request, form, formset, change)  # type: ignore[misc]
            return
        quotas = formset.save(commit=False)
        actor, user, ip = actor_of(request), request.user, ip_of(request)
        for quota in formset.deleted_objects:
            services.quota_delete(quota=quota, actor=actor, acting_user=user, ip=ip)
        for quota in quotas:
            services.quota_save(quota=quota, actor=actor, acting_user=user, ip=ip)


@admin.register(Tenant)
class TenantAdmin(QuotaFormsetMixin, TenantScopedAdmin):
    tenant_lookups = ("pk",)
    list_display = ["slug", "name", "is_active", "key_count", "usage_link", "created_at"]
    list_filter = ["is_active", "trace_content"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ["created_at", "updated_at"]
    inlines = [TenantQuotaInline, ApiKeyInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).annotate(_key_count=Count("api_keys"))

    @admin.display(description="Usage")
    def usage_link(self, obj: Tenant) -> str:
        return format_html('<a href="{}">charts</a>', reverse("admin:routing_usage_dashboard", args=[obj.pk]))

    @admin.display(description="API keys", ordering="_key_count")
    def key_count(self, obj: Tenant) -> int:
        return getattr(obj, "_key_count", 0)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        services.tenant_save(tenant=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: Tenant) -> None:
        services.tenant_delete(tenant=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in self.scoped(request, queryset, "delete"):
            services.tenant_delete(tenant=tenant, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))


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
class ApiKeyAdmin(KeyRotationAdminMixin, QuotaFormsetMixin, TenantScopedAdmin):
    """Tenant admins manage every key of their tenants; developers create keys and manage the ones they created."""

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
    readonly_fields = [
        "prefix",
        "status_display",
        "rotation_display",
        "rotated_from",
        "created_at",
        "revoked_at",
        "last_used_at",
        "created_by",
    ]
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
            return ["tenant", "name", "allowed_models", "scopes", "expires_at", "max_age_days"]
        return [
            "tenant",
            "name",
            "prefix",
            "status_display",
            "allowed_models",
            "scopes",
            "expires_at",
            "max_age_days",
            "rotation_display",
            "rotated_from",
            "created_at",
            "revoked_at",
            "last_used_at",
            "created_by",
        ]

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
            services.api_key_update(api_key=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))
            return
        api_key, secret = services.api_key_create(
            tenant=obj.tenant,
            name=obj.name,
            allowed_models=obj.allowed_models,
            scopes=obj.scopes,
            expires_at=obj.expires_at,
            max_age_days=obj.max_age_days,
            created_by=request.user,
            acting_user=request.user,
            actor=actor_of(request),
            ip=ip_of(request),
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

    def delete_model(self, request: HttpRequest, obj: ApiKey) -> None:
        services.api_key_delete(api_key=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in self.scoped(request, queryset, "delete"):
            services.api_key_delete(
                api_key=api_key, actor=actor_of(request), acting_user=request.user, ip=ip_of(request)
            )

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        allowed = self.scoped(request, queryset, "change")
        revoked = 0
        for api_key in allowed.filter(revoked_at__isnull=True):
            services.api_key_revoke(
                api_key=api_key, actor=actor_of(request), acting_user=request.user, ip=ip_of(request)
            )
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
        refused = queryset.count() - allowed.count()
        if refused:
            self.message_user(
                request,
                f"{refused} selected key(s) left alone: developers may only revoke the keys they created.",
                messages.WARNING,
            )


class MembershipByUsernameForm(forms.ModelForm):
    """For tenant admins: the member is named by exact username, so the form lists no
    users of other tenants (a select of every user would leak who else is on the platform)."""

    username = forms.CharField(max_length=150, help_text="The exact username of the person to add.")

    class Meta:
        model = Membership
        fields = ["tenant", "role"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["username"].initial = self.instance.user.get_username()
            self.fields["username"].disabled = True

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        user_model = get_user_model()
        try:
            self.instance.user = user_model._default_manager.get(**{user_model.USERNAME_FIELD: username})
        except user_model.DoesNotExist:
            raise forms.ValidationError("There is no user with that username; a platform admin creates users.")
        return username


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "tenant__slug"]
    fields = ["user", "tenant", "role"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if request.user.is_superuser:
            return super().get_form(request, obj, change, **kwargs)
        kwargs["form"] = MembershipByUsernameForm
        kwargs["fields"] = ["username", "tenant", "role"]
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields if request.user.is_superuser else ["username", "tenant", "role"]

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        self.check_tenant(request, obj.tenant_id, "change" if change else "add")
        services.membership_save(membership=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        services.membership_delete(membership=obj, actor=actor_of(request), acting_user=request.user, ip=ip_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in self.scoped(request, queryset, "delete"):
            services.membership_delete(
                membership=membership, actor=actor_of(request), acting_user=request.user, ip=ip_of(request)
            )


class ScopedAuditEventAdmin(TenantScopedAdmin, AuditEventAdmin):
    """Auditors and tenant admins read their tenants' audit events; platform events stay with platform admins."""

    tenant_lookups = ("tenant_id",)

    def has_export_permission(self, request: HttpRequest) -> bool:
        return super().has_export_permission(request) and self._may(request, None, "export")

    def export_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        return self.scope(AuditEvent.objects.all(), self.allowed_tenants(request, "export"))

    def export_tenant_allowed(self, request: HttpRequest, tenant_id: int) -> bool:
        tenants = self.allowed_tenants(request, "export")
        if tenants is None:
            # A platform admin names any tenant that exists, or existed and left events behind.
            return Tenant.objects.filter(pk=tenant_id).exists() or super().export_tenant_allowed(request, tenant_id)
        return tenant_id in tenants

    def export_audit_tenants(
        self, request: HttpRequest, filters: Any, covered: QuerySet[AuditEvent] | None = None
    ) -> list[int | None]:
        tenants = self.allowed_tenants(request, "export")
        if tenants is None or filters.tenant_id is not None:
            return super().export_audit_tenants(request, filters, covered)
        # A tenant's auditor exports from their tenants only: the record goes to those chains, never the platform's.
        chosen = super().export_audit_tenants(request, filters, covered) if covered is not None else [None]
        recorded: list[int | None] = [tenant for tenant in chosen if tenant is not None] or [*sorted(tenants)]
        return recorded


admin.site.unregister(AuditEvent)
admin.site.register(AuditEvent, ScopedAuditEventAdmin)
