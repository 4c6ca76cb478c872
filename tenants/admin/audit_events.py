"""The audit event admin, scoped: auditors and tenant admins read and export their tenants' events only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin import AuditEventAdmin
from audit.models import AuditEvent
from tenants.models import Tenant
from tenants.scoping import TenantScopedAdmin


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
