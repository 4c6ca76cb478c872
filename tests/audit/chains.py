"""Helpers for the audit tests: events recorded into a chain, and `audit_verify` run in process."""

from __future__ import annotations

from io import StringIO

from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from audit.services import audit_record


def record(count: int, tenant_id: int = 4) -> list[AuditEvent]:
    return [audit_record(actor="user:a", action="probe", tenant_id=tenant_id, details={"n": n}) for n in range(count)]


def verify(*args: str) -> tuple[str, str, int]:
    """``manage.py audit_verify`` with ``args``: its output, its warnings and its exit status."""
    out, err = StringIO(), StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc.returncode
    return out.getvalue(), err.getvalue(), 0
