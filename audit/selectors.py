"""Reading the audit record: chain verification, filtered event streams, export lag."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.chain import GENESIS_HASH, HASHED_FIELDS, chain_for, link_error, timestamp
from audit.models import AuditChainHead, AuditEvent, AuditExportCheckpoint

# An exported row: the database id, the hashed fields in the chain's order, the hash.
ROW_FIELDS = ("id", *HASHED_FIELDS, "hash")


@dataclass(frozen=True)
class ChainReport:
    chain: str
    events: int
    broken_seq: int | None = None
    broken_id: int | None = None
    reason: str = ""
    # Against the export anchor (when one was given):
    last_seq: int = 0  # the database's last event of the chain
    anchored: int = 0  # stored (seq, hash) pairs compared
    changed: tuple[int, ...] = ()  # seqs whose hash differs from the stored one (the first few)
    changed_count: int = 0
    missing: tuple[tuple[int, int], ...] = ()  # ranges of stored seqs the database no longer has (the first few)
    missing_count: int = 0
    anchor_last_seq: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and not self.reason and self.anchor_ok

    @property
    def anchor_ok(self) -> bool:
        return not self.changed_count and not self.missing_count

    @property
    def truncated(self) -> bool:
        """The chain ends before the last event the anchor holds."""
        return self.last_seq < self.anchor_last_seq


class _AnchorComparison:
    """A merge of the database's (seq, hash) with the stored ones, both in seq order."""

    REPORTED = 20

    def __init__(self, anchored: Iterable[tuple[int, str]]) -> None:
        self._stored = iter(anchored)
        self._next: tuple[int, str] | None = next(self._stored, None)
        self.compared = 0
        self.last_seq = 0
        self.changed: list[int] = []
        self.changed_count = 0
        self.missing: list[list[int]] = []
        self.missing_count = 0

    def _advance(self) -> None:
        assert self._next is not None
        self.compared += 1
        self.last_seq = self._next[0]
        self._next = next(self._stored, None)

    def _missing(self, seq: int) -> None:
        self.missing_count += 1
        if self.missing and self.missing[-1][1] == seq - 1:
            self.missing[-1][1] = seq
        elif len(self.missing) < self.REPORTED:
            self.missing.append([seq, seq])

    def row(self, seq: int, digest: str) -> None:
        while self._next is not None and self._next[0] < seq:
            self._missing(self._next[0])
            self._advance()
        if self._next is not None and self._next[0] == seq:
            if self._next[1] != digest:
                self.changed_count += 1
                if len(self.changed) < self.REPORTED:
                    self.changed.append(seq)
            self._advance()

    def finish(self) -> None:
        while self._next is not None:
            self._missing(self._next[0])
            self._advance()


@dataclass(frozen=True)
class EventFilters:
    """What an export or API listing selects; every field optional."""

    tenant_id: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str = ""
    action: str = ""
    outcome: str = ""

    def apply(self, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        condition = Q()
        if self.tenant_id is not None:
            condition &= Q(tenant_id=self.tenant_id)
        if self.since is not None:
            condition &= Q(created_at__gte=self.since)
        if self.until is not None:
            condition &= Q(created_at__lt=self.until)
        if self.actor:
            condition &= Q(actor=self.actor)
        if self.action:
            # "api_key." selects a family of actions, "api_key.create" exactly one.
            condition &= Q(action__startswith=self.action) if self.action.endswith(".") else Q(action=self.action)
        if self.outcome:
            condition &= Q(outcome=self.outcome)
        return queryset.filter(condition)

    def describe(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "since": timestamp(self.since) if self.since else None,
            "until": timestamp(self.until) if self.until else None,
            "actor": self.actor or None,
            "action": self.action or None,
            "outcome": self.outcome or None,
        }


def event_row(values: dict[str, Any]) -> dict[str, Any]:
    """An event as exported: the chained fields plus its id, created_at in the canonical spelling."""
    row = {name: values[name] for name in ROW_FIELDS}
    row["created_at"] = timestamp(values["created_at"])
    row["ip"] = values["ip"] or None
    return row


def event_rows(
    queryset: QuerySet[AuditEvent], *, chunk_size: int = 2000, after_id: int = 0
) -> Iterator[dict[str, Any]]:
    """Rows in id order, fetched by keyset pages so memory stays bounded and no cursor is held open."""
    base = queryset.order_by("id").values(*ROW_FIELDS)
    last = after_id
    while True:
        page = list(base.filter(id__gt=last)[:chunk_size])
        for values in page:
            yield event_row(values)
        if len(page) < chunk_size:
            return
        last = page[-1]["id"]


def audit_chain_names(tenant_id: int | None = None, *, platform: bool = True) -> list[str]:
    """Every chain with events (or only the tenant's), sorted."""
    if tenant_id is not None:
        return [chain_for(tenant_id)]
    chains = set(AuditChainHead.objects.values_list("chain", flat=True))
    chains |= set(AuditEvent.objects.order_by().values_list("chain", flat=True).distinct())
    return sorted(chain for chain in chains if platform or chain != chain_for(None))


def audit_chain_verify(
    chain: str, *, chunk_size: int = 5000, anchored: Iterable[tuple[int, str]] | None = None
) -> ChainReport:
    """Walk one chain from its first event: report the first broken link, and with ``anchored`` (the
    (seq, hash) pairs an export stored, in seq order) every stored event the database changed or lost."""
    expected_seq, expected_prev, count = 1, GENESIS_HASH, 0
    broken: dict[str, Any] = {}
    comparison = _AnchorComparison(anchored if anchored is not None else ())
    base = AuditEvent.objects.filter(chain=chain).order_by("seq").values(*ROW_FIELDS)
    last_seq = db_last = 0
    while True:
        page = list(base.filter(seq__gt=last_seq)[:chunk_size])
        for values in page:
            row = event_row(values)
            db_last = row["seq"]
            comparison.row(row["seq"], row["hash"])
            if broken:
                continue  # past the first broken link the walk only compares with the anchor
            problem = link_error(row, expected_seq=expected_seq, expected_prev=expected_prev)
            if problem:
                broken = {"broken_seq": expected_seq, "broken_id": row["id"], "reason": problem}
                continue
            count += 1
            expected_seq, expected_prev = row["seq"] + 1, row["hash"]
        if len(page) < chunk_size:
            break
        last_seq = page[-1]["seq"]
    comparison.finish()
    head = AuditChainHead.objects.filter(chain=chain).values("seq", "hash").first()
    if not broken and head is not None and (head["seq"], head["hash"]) != (expected_seq - 1, expected_prev):
        broken = {
            "broken_seq": expected_seq if head["seq"] >= expected_seq else head["seq"],
            "reason": (
                f"the chain head records event {head['seq']} ({head['hash'][:16]}…) but the events end at "
                f"{expected_seq - 1} ({expected_prev[:16]}…): events at the end were removed or the head was altered"
            ),
        }
    return ChainReport(
        chain,
        count,
        **broken,
        last_seq=db_last,
        anchored=comparison.compared,
        changed=tuple(comparison.changed),
        changed_count=comparison.changed_count,
        missing=tuple((first, last) for first, last in comparison.missing),
        missing_count=comparison.missing_count,
        anchor_last_seq=comparison.last_seq,
    )


def audit_export_lag_seconds(now: dt.datetime | None = None) -> float:
    """How far the durable export trails the record, in seconds; 0 when every event is exported.

    With events waiting: now minus the newest exported event's time (or minus the oldest
    waiting event's time for a chain never exported). Two small queries, for a gauge.
    """
    now = now or timezone.now()
    done = {row["chain"]: row for row in AuditExportCheckpoint.objects.values("chain", "last_seq", "last_created_at")}
    lag = 0.0
    for head in AuditChainHead.objects.values("chain", "seq"):
        checkpoint = done.get(head["chain"])
        exported = checkpoint["last_seq"] if checkpoint else 0
        if head["seq"] <= exported:
            continue
        since = checkpoint["last_created_at"] if checkpoint else None
        if since is None:
            since = (
                AuditEvent.objects.filter(chain=head["chain"], seq=exported + 1)
                .values_list("created_at", flat=True)
                .first()
            )
        if since is not None:
            lag = max(lag, (now - since).total_seconds())
    return max(lag, 0.0)
