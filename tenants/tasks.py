"""Periodic jobs of the tenants app (thin: they call services)."""

from __future__ import annotations

from celery import shared_task

from tenants.rotation import secret_rotate as rotation_run


@shared_task
def secret_rotate() -> str:
    """Re-encrypt credentials with the newest key, rotate API keys past their maximum age, retire old ones."""
    return rotation_run(actor="system:secret_rotate").summary()
