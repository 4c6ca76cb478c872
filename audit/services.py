"""Writing audit events: inside the caller's transaction, or deferred from the hot path.

Every write appends to a hash chain (``audit.chain``). The chain's head row is locked
(``SELECT … FOR UPDATE``) for the rest of the writing transaction, so concurrent writers
of one chain queue up instead of forking it; the unique (chain, seq) constraint is the
backstop. On SQLite the project's IMMEDIATE transactions serialise writers anyway.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime as dt
import ipaddress
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.chain import chain_for, event_hash
from audit.models import AuditChainHead, AuditEvent
from core import registry
from core.batch_writer import BatchWriter, Codec
from core.db_refusals import json_writable, text_writable

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
    # Identifies a deferred entry across retries: a batch written again after a lost commit
    # acknowledgement (or a dead letter replayed twice) must not append its events twice.
    entry_key: str = field(default_factory=lambda: uuid.uuid4().hex)

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
            entry_key=self.entry_key or None,
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
            linked = _not_yet_written(by_chain[chain])
            if not linked:
                continue
            for event in linked:
                event.chain, event.seq, event.prev_hash = chain, head.seq + 1, head.hash
                event.hash = event_hash(event.chained_fields())
                head.seq, head.hash = event.seq, event.hash
            AuditEvent.objects.bulk_create(linked)
            AuditChainHead.objects.filter(chain=chain).update(seq=head.seq, hash=head.hash)
    return events


def _not_yet_written(events: list[AuditEvent]) -> list[AuditEvent]:
    """``events`` less those whose entry key is already in the trail (or earlier in the list)."""
    keys = [event.entry_key for event in events if event.entry_key]
    if not keys:
        return events
    seen = set(AuditEvent.objects.filter(entry_key__in=keys).values_list("entry_key", flat=True))
    fresh = []
    for event in events:
        if event.entry_key:
            if event.entry_key in seen:
                continue
            seen.add(event.entry_key)
        fresh.append(event)
    return fresh


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
    # Written once, in the caller's transaction: no retry to recognise, so no entry key.
    entry = AuditEntry(actor, action, target, tenant_id, outcome, ip, details or {}, entry_key="")
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


class DenialAggregator:
    """Refusals (bad keys, denied scopes, quota refusals) written in bounded space, however many arrive.

    Refusals fall into buckets by action, tenant, actor (the key prefix), client address,
    target and reason. In each interval of ``interval`` seconds the first refusal of a
    bucket is written as it is; the others are counted, and when the interval ends each
    bucket that saw more writes one summary event: the same action, actor, tenant, address
    and target, ``details`` holding ``reason``, ``count`` (refusals it stands for),
    ``first_at`` and ``last_at``. At most ``max_buckets`` buckets per interval: refusals
    beyond them are counted in one ``audit.denials_overflow`` event (platform chain, counts
    per action). So an interval writes at most ``2 * max_buckets + 1`` events and holds at
    most ``max_buckets`` buckets in memory, whatever the flood.

    ``record`` is for the event loop (microseconds, no I/O: events go to the deferred audit
    writer). An interval ends on a timer of the loop that opened it, at the next refusal
    after it, or at ``flush`` (called at interpreter exit, before the deferred audit
    writer's own exit flush, so the summaries are written too).
    """

    def __init__(self, *, interval: float, max_buckets: int, write: Callable[[AuditEntry], None]) -> None:
        self.interval = interval
        self.max_buckets = max_buckets
        self._write = write
        self._buckets: dict[tuple[Any, ...], _Bucket] = {}
        self._overflow: _Bucket | None = None
        self._ends = 0.0
        self._lock = threading.Lock()
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def record(self, entry: AuditEntry) -> None:
        now = time.monotonic()
        first = False
        with self._lock:
            ended = self._end_interval() if now >= self._ends else []
            if not self._buckets and self._overflow is None:
                self._ends = now + self.interval
            key = (entry.action, entry.tenant_id, entry.actor, entry.ip, entry.target, _reason(entry))
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.add(entry)
            elif len(self._buckets) < self.max_buckets:
                self._buckets[key] = _Bucket(entry)
                first = True
            else:
                if self._overflow is None:
                    self._overflow = _Bucket(entry)
                self._overflow.add(entry)
        for summary in ended:
            self._write(summary)
        if first:
            self._write(entry)
        self._timer_start()

    def flush(self) -> int:
        """End the interval now: write every summary still held; returns how many."""
        with self._lock:
            ended = self._end_interval()
        for summary in ended:
            self._write(summary)
        return len(ended)

    def discard(self) -> int:
        """Drop the summaries held (a test's refusals go with it); returns how many."""
        with self._lock:
            return len(self._end_interval())

    def _end_interval(self) -> list[AuditEntry]:
        summaries = [bucket.summary(self.interval) for bucket in self._buckets.values() if bucket.count]
        if self._overflow is not None:
            summaries.append(self._overflow.overflow_summary(self.interval, self.max_buckets))
        self._buckets, self._overflow = {}, None
        return summaries

    def _timer_start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer_loop is not loop:
            self._timer_loop = loop
            loop.call_later(max(0.0, self._ends - time.monotonic()) + 0.001, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer_loop = None
        if time.monotonic() < self._ends:
            self._timer_start()
            return
        self.flush()


def _reason(entry: AuditEntry) -> str:
    details = entry.details or {}
    return str(details.get("reason") or details.get("limit") or details.get("error") or "")


class _Bucket:
    __slots__ = ("actions", "count", "entry", "first_at", "last_at")

    def __init__(self, entry: AuditEntry) -> None:
        self.entry = entry  # the refusal written as it is, the template of the summary
        self.count = 0
        self.first_at = self.last_at = entry.created_at
        self.actions: dict[str, int] = {}

    def add(self, entry: AuditEntry) -> None:
        if not self.count:
            self.first_at = entry.created_at
        self.count += 1
        self.last_at = entry.created_at
        self.actions[entry.action] = self.actions.get(entry.action, 0) + 1

    def summary(self, interval: float) -> AuditEntry:
        return dataclasses.replace(
            self.entry,
            entry_key=uuid.uuid4().hex,  # another event than the first refusal written as it was
            details={
                "reason": _reason(self.entry),
                "count": self.count,
                "first_at": self.first_at.isoformat(),
                "last_at": self.last_at.isoformat(),
                "interval_seconds": interval,
            },
            created_at=self.last_at,
        )

    def overflow_summary(self, interval: float, max_buckets: int) -> AuditEntry:
        return AuditEntry(
            actor="system",
            action="audit.denials_overflow",
            outcome=AuditEvent.Outcome.DENIED,
            details={
                "count": self.count,
                "actions": dict(sorted(self.actions.items())),
                "first_at": self.first_at.isoformat(),
                "last_at": self.last_at.isoformat(),
                "interval_seconds": interval,
                "max_buckets": max_buckets,
            },
            created_at=self.last_at,
        )


denial_aggregator = DenialAggregator(
    interval=settings.AUDIT_DENIAL_INTERVAL, max_buckets=settings.AUDIT_DENIAL_MAX_BUCKETS, write=deferred_audit.add
)
# Its summaries become rows of the audit writer: flushed before it (core.registry order).
registry.register("audit.denials", flush=denial_aggregator.flush, reset=denial_aggregator.discard)


def audit_denial_record(entry: AuditEntry) -> None:
    """Record a refusal from the hot path: the first of its kind per interval as it is, the rest as counts."""
    denial_aggregator.record(entry)
