"""Read-only admin for the audit record: it can be searched and filtered, never edited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "target", "outcome", "tenant_id", "ip"]
    list_filter = ["outcome", "action"]
    search_fields = ["actor", "action", "target"]
    readonly_fields = ["created_at", "actor", "tenant_id", "action", "target", "outcome", "ip", "details"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
