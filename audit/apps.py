"""App config for the audit record; it hands core the function audited changes write their events with."""

from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit"

    def ready(self) -> None:
        from audit.services import audit_record
        from core.changes import audit_recorder_install

        audit_recorder_install(audit_record)
