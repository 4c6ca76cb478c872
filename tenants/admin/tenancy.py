"""Admin for tenants and their members; every write goes through tenants.services (and so is audited)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from core.admin_services import AdminWrites
from tenants import services
from tenants.admin.base import QuotaFormsetMixin, TenantQuotaInline, TenantServiceAdmin
from tenants.admin.keys import ApiKeyInline
from tenants.models import Membership, Tenant


@admin.register(Tenant)
class TenantAdmin(QuotaFormsetMixin, TenantServiceAdmin):
    writes = AdminWrites("tenant", save=services.tenant_save, delete=services.tenant_delete, audited=services.TENANTS)
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
class MembershipAdmin(TenantServiceAdmin):
    writes = AdminWrites(
        "membership", save=services.membership_save, delete=services.membership_delete, audited=services.MEMBERSHIPS
    )
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
        super().save_model(request, obj, form, change)
