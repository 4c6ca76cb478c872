"""Writing audit events: inside the caller's transaction, or deferred from the hot path.

Every write appends to a hash chain (``audit.chain``). The chain's head row is locked
(``SELECT … FOR UPDATE``) for the rest of the writing transaction, so concurrent writers
of one chain queue up instead of forking it; the unique (chain, seq) constraint is the
backstop. On SQLite the project's IMMEDIATE transactions serialise writers anyway.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.chain import chain_for, event_hash
from audit.models import AuditChainHead, AuditEvent
from audit.writer import BatchWriter, Codec, json_writable, text_writable

_IP_FIELD = AuditEvent._meta.get_field("ip")


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str = ""
    tenant_id: int | None = None
    outcome: str = AuditEvent.Outcome.SUCCESS
    ip: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # When it happened: a deferred entry is written up to a flush interval later.
    created_at: dt.datetime = field(default_factory=timezone.now)

    def to_model(self) -> AuditEvent:
        """The unsaved event with its values as the database will return them (so the hash holds).

        Text no database stores (NUL, lone surrogates) becomes U+FFFD and an address that is
        not one is moved into ``details``: the event is written, never refused, and its hash
        covers exactly what the database holds.
        """
        details = json_writable(json.loads(json.dumps(self.details or {})))
        ip = _ip_writable(self.ip)
        if ip is None and self.ip:
            details["ip_unparsed"] = text_writable(str(self.ip))[:100]
        return AuditEvent(
            created_at=self.created_at,
            actor=text_writable(self.actor)[:200],
            action=text_writable(self.action)[:100],
            target=text_writable(self.target)[:300],
            tenant_id=None if self.tenant_id is None else int(self.tenant_id),
            outcome=self.outcome,
            ip=ip,
            # A JSON round trip: tuples become lists, keys strings — what the column will hold.
            details=details,
        )


def _ip_writable(value: str | None) -> str | None:
    """The address as the column stores it (IPv4-mapped IPv6 unpacked), or None if it is not an address."""
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return _IP_FIELD.get_prep_value(value) or None


def _entry_dump(entry: AuditEntry) -> dict[str, Any]:
    return dataclasses.asdict(entry) | {"created_at": entry.created_at.isoformat()}


def _entry_load(document: dict[str, Any]) -> AuditEntry:
    names = {item.name for item in dataclasses.fields(AuditEntry)}
    values = {name: value for name, value in document.items() if name in names}
    values["created_at"] = dt.datetime.fromisoformat(document["created_at"])
    return AuditEntry(**values)


AUDIT_CODEC = Codec[AuditEntry](dump=_entry_dump, load=_entry_load)


def _head_lock(chain: str) -> AuditChainHead:
    """Lock the chain's head row until the transaction ends, creating it for a new chain."""
    AuditChainHead.objects.bulk_create([AuditChainHead(chain=chain)], ignore_conflicts=True)
    return AuditChainHead.objects.select_for_update().get(chain=chain)


def audit_append(events: list[AuditEvent]) -> list[AuditEvent]:
    """Link unsaved events into their chains and insert them, in one transaction.

    Chains are locked in sorted order so two writers never wait on each other crosswise.
    """
    by_chain: dict[str, list[AuditEvent]] = defaultdict(list)
    for event in events:
        by_chain[chain_for(event.tenant_id)].append(event)
    with transaction.atomic():
        for chain in sorted(by_chain):
            head = _head_lock(chain)
            linked = by_chain[chain]
            for event in linked:
                event.chain, event.seq, event.prev_hash = chain, head.seq + 1, head.hash
                event.hash = event_hash(event.chained_fields())
                head.seq, head.hash = event.seq, event.hash
            AuditEvent.objects.bulk_create(linked)
            AuditChainHead.objects.filter(chain=chain).update(seq=head.seq, hash=head.hash)
    return events


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
    return audit_append([entry.to_model()])[0]


def _write_entries(entries: list[AuditEntry]) -> None:
    audit_append([entry.to_model() for entry in entries])


deferred_audit = BatchWriter[AuditEntry](
    "audit",
    _write_entries,
    interval=settings.USAGE_FLUSH_INTERVAL,
    batch_size=settings.USAGE_FLUSH_BATCH,
    codec=AUDIT_CODEC,
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
