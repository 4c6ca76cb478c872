"""The base of the tenants' admins: writes through the services as the acting user, quotas edited inline."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.actors import actor_of, ip_of
from core.admin_services import ServiceAdminMixin
from tenants import services
from tenants.models import Quota
from tenants.roles import tenant_ids_for
from tenants.scoping import TenantScopedAdmin


class TenantServiceAdmin(ServiceAdminMixin, TenantScopedAdmin):
    """Services are told who acts (their role bounds the change); a bulk delete takes only what they may delete."""

    def service_kwargs(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().service_kwargs(request), "acting_user": request.user}

    def deletable(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return self.scoped(request, queryset, "delete")


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
        who: dict[str, Any] = {"actor": actor_of(request), "acting_user": request.user, "ip": ip_of(request)}
        for quota in formset.deleted_objects:
            services.quota_delete(quota=quota, **who)
        for quota in quotas:
            services.quota_save(quota=quota, **who)
