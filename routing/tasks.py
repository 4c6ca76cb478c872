"""Periodic jobs of the routing app (thin: they call services)."""

from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from routing.quota_reconcile import quota_reconcile as reconcile
from routing.services import request_logs_prune


@shared_task
def usage_prune() -> int:
    """Drop raw request logs past USAGE_RETENTION_DAYS (0 keeps them forever); rollups stay."""
    if not settings.USAGE_RETENTION_DAYS:
        return 0
    return request_logs_prune(older_than=timezone.now() - dt.timedelta(days=settings.USAGE_RETENTION_DAYS))


# Named as when it was a tenants task: the beat schedule and messages already queued call it so.
@shared_task(name="tenants.tasks.quota_reconcile")
def quota_reconcile() -> str:
    """Set the budget counters in Redis from the usage records (what an outage or a dead process left wrong)."""
    return reconcile().summary()


from routing.ml.tasks import router_train_task  # noqa: E402,F401  (so celery autodiscovery registers it)
