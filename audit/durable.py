"""Durable audit export: new events of each chain, written as JSONL segments + manifests.

Exactly once per segment. A segment is named after its chain and sequence range
(``tenant-7/tenant-7-000000000101-000000000250.jsonl`` and ``….manifest.json``). The
checkpoint of a chain moves only after the data file and then its manifest are durably
stored (fsync for the local directory, a completed PUT for S3), inside a transaction that
holds the checkpoint row locked, so two exporters never write the same range.

The store is the anchor of the hash chains outside the database (``audit_verify``
compares the database with it), so it is write-once and the exporter follows it, not the
checkpoint table: a name is never written twice (``SegmentExists``); a chain's next
segment starts after the last segment stored, and only if the database's event there is
still the one stored. A segment stored beyond the checkpoint (a run that died before its
checkpoint, or a checkpoint table reset) is adopted only if the database still holds
exactly its events; otherwise, or if the database no longer continues the stored chain,
that chain's export stops and is reported (``ExportResult.refused``) until someone finds
out why — a rewritten history never replaces or extends the anchored one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from django.conf import settings
from django.db import transaction

from audit.chain import GENESIS_HASH
from audit.exports import Manifest, jsonl_line
from audit.models import AuditEvent, AuditExportCheckpoint
from audit.segment_store import SegmentExists, SegmentStore, segment_store
from audit.selectors import ROW_FIELDS, audit_chain_names, event_row

logger = logging.getLogger(__name__)


def chain_folder(chain: str) -> str:
    return chain.replace(":", "-")


def segment_name(chain: str, first_seq: int, last_seq: int) -> str:
    folder = chain_folder(chain)
    return f"{folder}/{folder}-{first_seq:012d}-{last_seq:012d}.jsonl"


def manifest_name(data_name: str) -> str:
    return data_name.removesuffix(".jsonl") + ".manifest.json"


_SEGMENT = re.compile(r"-(\d{12})-(\d{12})\.jsonl$")


def folder_chain(folder: str) -> str:
    """The chain a store folder holds (the inverse of ``chain_folder``)."""
    return folder.replace("-", ":", 1) if folder.startswith("tenant-") else folder


@dataclass(frozen=True)
class AnchoredSegment:
    name: str
    first_seq: int
    last_seq: int


def anchored_segments(store: SegmentStore, chain: str) -> list[AnchoredSegment]:
    """The chain's data files in the store, by sequence range."""
    segments = []
    for name in store.names(chain_folder(chain)):
        match = _SEGMENT.search(name)
        if match:
            segments.append(AnchoredSegment(name, int(match.group(1)), int(match.group(2))))
    return sorted(segments, key=lambda segment: (segment.first_seq, segment.last_seq))


def _stored_rows(store: SegmentStore, name: str) -> list[dict[str, Any]] | None:
    data = store.read(name)
    if data is None:
        return None
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _stored_last(store: SegmentStore, segment: AnchoredSegment) -> tuple[int, str] | None:
    """The (seq, hash) the segment ends with: from its manifest, else from its last line."""
    manifest = store.read(manifest_name(segment.name))
    if manifest is not None:
        try:
            document = json.loads(manifest)
            return int(document["chains"][document["chain"]]["last_seq"]), str(document["last_hash"])
        except (KeyError, TypeError, ValueError):
            pass
    rows = _stored_rows(store, segment.name)
    return (int(rows[-1]["seq"]), str(rows[-1]["hash"])) if rows else None


@dataclass
class ExportResult:
    segments: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    events: int = 0
    refused: list[str] = field(default_factory=list)  # chains whose database no longer matches the store

    def as_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "adopted": self.adopted, "events": self.events, "refused": self.refused}


def _segment_rows(chain: str, first_seq: int, last_seq: int | None, limit: int) -> list[dict[str, Any]]:
    events = AuditEvent.objects.filter(chain=chain, seq__gte=first_seq).order_by("seq")
    if last_seq is not None:
        events = events.filter(seq__lte=last_seq)
    return [event_row(values) for values in events.values(*ROW_FIELDS)[:limit]]


def _segment_document(chain: str, name: str, rows: list[dict[str, Any]], data: bytes, prev_hash: str) -> bytes:
    """The manifest of a data file whose bytes are ``data`` and rows ``rows``."""
    manifest = Manifest(file_name=name.rsplit("/", 1)[-1], file_format="jsonl", filters={"chain": chain})
    for row in rows:
        manifest.add_row(row)
    manifest.add_bytes(data)
    linked = rows[0]["prev_hash"] == prev_hash and all(
        later["seq"] == earlier["seq"] + 1 and later["prev_hash"] == earlier["hash"]
        for earlier, later in pairwise(rows)
    )
    if not linked:
        logger.error("audit export: chain %s does not link up in %s; exported as stored, run audit_verify", chain, name)
    document = manifest.document(chain=chain, previous_hash=prev_hash, links_verified=linked)
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _segment_build(chain: str, rows: list[dict[str, Any]], prev_hash: str) -> tuple[str, bytes, bytes]:
    name = segment_name(chain, rows[0]["seq"], rows[-1]["seq"])
    data = b"".join(jsonl_line(row) for row in rows)
    return name, data, _segment_document(chain, name, rows, data, prev_hash)


def _difference(stored: list[dict[str, Any]], current: list[dict[str, Any]]) -> str | None:
    """How the database's events differ from a stored segment's (by seq and hash); None if they do not."""
    now = {row["seq"]: row["hash"] for row in current}
    for row in stored:
        seq, digest = row["seq"], row["hash"]
        if seq not in now:
            return f"event {seq} is no longer in the database"
        if now[seq] != digest:
            return f"event {seq} has another hash in the database ({now[seq][:16]}…, stored {digest[:16]}…)"
    return None


def _segment_adopt(
    store: SegmentStore, chain: str, checkpoint: AuditExportCheckpoint, segment: AnchoredSegment
) -> str | None:
    """Move the checkpoint over a stored segment the database still matches; why not, if it does not."""
    stored = _stored_rows(store, segment.name)
    if not stored:
        return f"{segment.name} cannot be read back"
    current = _segment_rows(chain, segment.first_seq, segment.last_seq, segment.last_seq - segment.first_seq + 1)
    problem = _difference(stored, current)
    if problem:
        return f"the database no longer matches the stored {segment.name}: {problem}"
    if store.read(manifest_name(segment.name)) is None:  # the run died between the data file and its manifest
        data = store.read(segment.name) or b""
        store.write(
            manifest_name(segment.name), _segment_document(chain, segment.name, stored, data, stored[0]["prev_hash"])
        )
    _checkpoint_advance(checkpoint, chain, stored[-1]["seq"], stored[-1]["hash"], segment.name)
    return None


def _checkpoint_advance(checkpoint: AuditExportCheckpoint, chain: str, seq: int, digest: str, name: str) -> None:
    checkpoint.last_seq = seq
    checkpoint.last_hash = digest
    checkpoint.last_created_at = (
        AuditEvent.objects.filter(chain=chain, seq=seq).values_list("created_at", flat=True).first()
    )
    checkpoint.segment = name
    checkpoint.save()


def _refuse(result: ExportResult, chain: str, problem: str) -> bool:
    result.refused.append(f"{chain}: {problem}")
    logger.error("audit export of %s stopped: %s; run manage.py audit_verify", chain, problem)
    return False


def _segment_export(store: SegmentStore, chain: str, limit: int, result: ExportResult) -> bool:
    """Write (or adopt) the next segment of ``chain``; False when it is fully exported or refused."""
    with transaction.atomic():
        AuditExportCheckpoint.objects.bulk_create([AuditExportCheckpoint(chain=chain)], ignore_conflicts=True)
        checkpoint = AuditExportCheckpoint.objects.select_for_update().get(chain=chain)
        segments = anchored_segments(store, chain)
        newest = max(segments, key=lambda segment: segment.last_seq) if segments else None
        anchored = newest.last_seq if newest else 0
        if checkpoint.last_seq < anchored:
            segment = next(segment for segment in segments if segment.last_seq > checkpoint.last_seq)
            adopted = segment.last_seq - max(segment.first_seq, checkpoint.last_seq + 1) + 1
            problem = _segment_adopt(store, chain, checkpoint, segment)
            if problem:
                return _refuse(result, chain, problem)
            result.adopted.append(segment.name)
            result.events += adopted
            return True
        if checkpoint.last_seq > anchored:
            logger.warning(
                "audit export: the checkpoint of %s is at %d but the store ends at %d; exporting from the store's end",
                chain,
                checkpoint.last_seq,
                anchored,
            )
        rows = _segment_rows(chain, anchored + 1, None, limit)
        if not rows:
            return False
        prev_hash = GENESIS_HASH
        if newest is not None:
            last = _stored_last(store, newest)
            if last is None:
                return _refuse(result, chain, f"{newest.name} cannot be read back")
            prev_hash = last[1]
            now = AuditEvent.objects.filter(chain=chain, seq=anchored).values_list("hash", flat=True).first()
            if now != prev_hash:
                found = "is gone" if now is None else f"has another hash ({now[:16]}…)"
                return _refuse(result, chain, f"event {anchored}, the last one stored, {found} in the database")
        name, data, manifest = _segment_build(chain, rows, prev_hash)
        try:
            store.write(name, data)
            store.write(manifest_name(name), manifest)
        except SegmentExists as exc:
            return _refuse(result, chain, f"the store already holds {exc}; it is never replaced")
        _checkpoint_advance(checkpoint, chain, rows[-1]["seq"], rows[-1]["hash"], name)
        result.segments.append(name)
        result.events += len(rows)
        return True


def audit_export_run(*, store: SegmentStore | None = None, segment_events: int | None = None) -> ExportResult:
    """Export every chain's events since its last stored segment; safe to run concurrently and to retry."""
    store = store or segment_store()
    limit = segment_events or settings.AUDIT_EXPORT_SEGMENT_EVENTS
    result = ExportResult()
    for chain in audit_chain_names():
        while _segment_export(store, chain, limit, result):
            pass
    return result


# Anchor reading, for audit_verify -------------------------------------------------------


@dataclass
class Anchor:
    """What the export store holds of one chain, read segment by segment.

    ``links()`` yields each stored (seq, hash) in order, once, and notes in ``problems``
    what is wrong with the store itself: a segment altered (its SHA-256 is not its
    manifest's), a gap between segments (a segment removed), two segments disagreeing.
    """

    chain: str
    segments: list[AnchoredSegment]
    store: SegmentStore
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not a sign of tampering (an export in progress)
    last_seq: int = 0
    last_created_at: str | None = None
    exported_at: str | None = None

    def links(self) -> Iterator[tuple[int, str]]:
        expected = 1
        recent: dict[int, str] = {}
        for position, segment in enumerate(self.segments):
            data = self.store.read(segment.name)
            if data is None:
                self.problems.append(f"{segment.name} is listed but cannot be read")
                continue
            manifest = self.store.read(manifest_name(segment.name))
            if manifest is None:
                (self.notes if position == len(self.segments) - 1 else self.problems).append(
                    f"{segment.name} has no manifest (an export interrupted; the next run completes it)"
                )
            elif json.loads(manifest).get("sha256") != hashlib.sha256(data).hexdigest():
                self.problems.append(f"{segment.name} differs from its manifest's SHA-256 (altered in the store)")
            if segment.first_seq > expected:
                self.problems.append(f"no segment holds events {expected}-{segment.first_seq - 1} (a segment removed)")
            current: dict[int, str] = {}
            for line in data.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                seq, digest = int(row["seq"]), str(row["hash"])
                current[seq] = digest
                if seq < expected:
                    if recent.get(seq, digest) != digest:
                        self.problems.append(f"two stored segments disagree on event {seq}")
                    continue
                expected = seq + 1
                yield seq, digest
            recent = current


def anchor_read(store: SegmentStore, chain: str) -> Anchor:
    """The chain's anchor: its segments and how far they reach (the last segment's manifest read now)."""
    segments = anchored_segments(store, chain)
    anchor = Anchor(chain, segments, store)
    if segments:
        newest = max(segments, key=lambda segment: segment.last_seq)
        anchor.last_seq = newest.last_seq
        manifest = store.read(manifest_name(newest.name))
        if manifest is not None:
            document = json.loads(manifest)
            anchor.last_created_at = (document.get("time_range") or {}).get("last")
            anchor.exported_at = document.get("generated_at")
    return anchor


def anchored_chains(store: SegmentStore) -> list[str]:
    return [folder_chain(folder) for folder in store.folders()]
