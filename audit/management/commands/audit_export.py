"""``manage.py audit_export``: run the durable audit export now (same service as the Celery task);
exit status 1 when a chain is refused because the database no longer matches the store."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.durable import audit_export_run
from audit.selectors import audit_export_lag_seconds


class Command(BaseCommand):
    help = "Write audit events recorded since the last checkpoint as JSONL segments + manifests."

    def handle(self, *args: Any, **options: Any) -> None:
        result = audit_export_run()
        for name in result.adopted:
            self.stdout.write(f"completed {name} (left by an interrupted run)")
        for name in result.segments:
            self.stdout.write(f"wrote {name}")
        self.stdout.write(
            f"{result.events} events exported in {len(result.segments) + len(result.adopted)} segments; "
            f"export lag {audit_export_lag_seconds():.1f} s"
        )
        for problem in result.refused:
            self.stderr.write(f"REFUSED {problem}")
        if result.refused:
            raise CommandError(
                f"{len(result.refused)} chain(s) not exported: the database no longer matches what the store holds; "
                "run manage.py audit_verify.",
                returncode=1,
            )
