"""App config for the audit record; it hands core the function audited changes write their events with."""

from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit"

    def ready(self) -> None:
        from audit.services import audit_record
        from core.changes import audit_recorder_install
        from core.permissions import AUDITOR, TENANT_ADMIN, roles_grant, scope_reads

        audit_recorder_install(audit_record)
        roles_grant({TENANT_ADMIN: {"audit.auditevent": {"view"}}, AUDITOR: {"audit.auditevent": {"view", "export"}}})
        # A key with the "audit" scope reads the trail: only who may see it may grant that scope.
        scope_reads("audit", "audit.auditevent", "view")
