"""Read-only admin for the scheduler: who leads, and every periodic job run with its outcome."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from llm_platform.models import JobRun, SchedulerLease


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ["job", "period_start", "outcome", "fence", "worker", "claimed_at", "finished_at"]
    list_filter = ["outcome", "job"]
    search_fields = ["job", "task_id"]
    date_hierarchy = "period_start"


@admin.register(SchedulerLease)
class SchedulerLeaseAdmin(ReadOnlyAdmin):
    list_display = ["name", "holder", "token", "expires_at"]
