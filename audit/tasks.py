"""Celery tasks of the audit record (thin: they call a service)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from audit.durable import audit_export_run


@shared_task(name="audit.tasks.audit_export", ignore_result=True)
def audit_export() -> dict[str, Any]:
    """Write the events recorded since the last checkpoint to the export storage (safe to retry)."""
    return audit_export_run().as_dict()
