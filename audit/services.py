"""Writing audit events: inside the caller's transaction, or deferred from the hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from audit.models import AuditEvent
from audit.writer import BatchWriter


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str = ""
    tenant_id: int | None = None
    outcome: str = AuditEvent.Outcome.SUCCESS
    ip: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_model(self) -> AuditEvent:
        return AuditEvent(
            actor=self.actor[:200],
            action=self.action,
            target=self.target[:300],
            tenant_id=self.tenant_id,
            outcome=self.outcome,
            ip=self.ip,
            details=self.details,
        )


def audit_record(
    *,
    actor: str,
    action: str,
    target: str = "",
    tenant_id: int | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one audit event now, in the caller's transaction (so it commits or rolls back with the change)."""
    entry = AuditEntry(actor, action, target, tenant_id, outcome, ip, details or {})
    event = entry.to_model()
    event.save()
    return event


def _write_entries(entries: list[AuditEntry]) -> None:
    with transaction.atomic():
        AuditEvent.objects.bulk_create([entry.to_model() for entry in entries])


deferred_audit = BatchWriter[AuditEntry](
    "audit",
    _write_entries,
    interval=settings.USAGE_FLUSH_INTERVAL,
    batch_size=settings.USAGE_FLUSH_BATCH,
)


def audit_record_deferred(entry: AuditEntry) -> None:
    """Queue an audit event from the async hot path (e.g. a failed key authentication)."""
    deferred_audit.add(entry)


def changes_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields that differ, as {"field": {"before": old, "after": new}}."""
    return {
        name: {"before": before.get(name), "after": after.get(name)}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }
