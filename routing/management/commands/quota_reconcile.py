"""Set the budget counters in Redis from the usage records now (the pass the scheduler makes every minute)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routing.quota_reconcile import quota_reconcile


class Command(BaseCommand):
    help = (
        "Recompute every budget counter of the current day and month windows from the usage records and "
        "set it in Redis, for the requests started before the watermark (QUOTA_RECONCILE_LAG seconds ago, "
        "or --lag). Run it after restoring a Redis that lost its data, or after an outage."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--lag",
            type=float,
            default=None,
            help="Seconds before now for the watermark (default QUOTA_RECONCILE_LAG); 0 takes every record "
            "so far, and drops the reservations of requests still in flight until they end.",
        )

    def handle(self, *args: Any, lag: float | None, **options: Any) -> None:
        if lag is not None and lag < 0:
            raise CommandError("--lag must be 0 or more seconds")
        try:
            result = quota_reconcile(lag=lag)
        except Exception as exc:  # redis.RedisError, OSError: Redis unreachable
            raise CommandError(f"reconcile failed: {type(exc).__name__}: {exc}") from exc
        self.stdout.write(result.summary())
