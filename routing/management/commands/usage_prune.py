"""Delete raw request logs older than the retention period (the same job beat runs hourly)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from routing.services import request_logs_prune


class Command(BaseCommand):
    help = "Delete request logs older than --days (default USAGE_RETENTION_DAYS); hourly rollups are kept."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--days", type=int, default=settings.USAGE_RETENTION_DAYS)

    def handle(self, *args: Any, days: int, **options: Any) -> None:
        if days <= 0:
            self.stdout.write("retention is 0: request logs are kept forever")
            return
        deleted = request_logs_prune(older_than=timezone.now() - dt.timedelta(days=days))
        self.stdout.write(f"deleted {deleted} request logs older than {days} days")
