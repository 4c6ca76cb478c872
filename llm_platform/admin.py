"""Read-only admin for the scheduler (who leads, every periodic job run) and for the admin login throttle's counts."""

from __future__ import annotations

from typing import Any

from axes import admin as axes_admin  # registers axes' admins now, so the one below can replace its own
from axes.models import AccessAttempt
from django.contrib import admin

from core.read_only import ReadOnlyAdminMixin
from llm_platform.login_throttle import LoginThrottleHandler
from llm_platform.models import JobRun, SchedulerLease


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The scheduler's records: written by beat and the workers only."""


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ["job", "period_start", "trigger", "outcome", "fence", "worker", "claimed_at", "finished_at"]
    list_filter = ["outcome", "trigger", "job"]
    search_fields = ["job", "task_id"]
    date_hierarchy = "period_start"


@admin.register(SchedulerLease)
class SchedulerLeaseAdmin(ReadOnlyAdmin):
    list_display = ["name", "holder", "token", "expires_at"]


class AccessAttemptAdmin(axes_admin.AccessAttemptAdmin):
    """Axes' failed-login counts; "clean up expired" uses the platform's handler, whose cool-offs differ per client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handler = LoginThrottleHandler()


admin.site.unregister(AccessAttempt)
admin.site.register(AccessAttempt, AccessAttemptAdmin)
