"""Durable audit export: new events of each chain, written as JSONL segments + manifests.

Exactly once per segment. A segment is named after its chain and sequence range
(``tenant-7/tenant-7-000000000101-000000000250.jsonl`` and ``….manifest.json``), so
writing it again writes the same name. The checkpoint of a chain moves only after the
data file and then its manifest are durably stored (fsync for the local directory, a
completed PUT for S3), inside a transaction that holds the checkpoint row locked, so two
exporters never write the same range. After a crash between the write and the
checkpoint, the next run finds the segment that starts at the checkpoint, rebuilds its
manifest if that was not stored, and adopts it — nothing is lost, nothing is duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction

from audit.chain import GENESIS_HASH
from audit.exports import Manifest, jsonl_line
from audit.models import AuditEvent, AuditExportCheckpoint
from audit.selectors import ROW_FIELDS, audit_chain_names, event_row

logger = logging.getLogger(__name__)


class SegmentStore(Protocol):
    def names(self, folder: str) -> list[str]: ...
    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...


class LocalSegmentStore:
    """A directory; each file is written to a temporary name, fsynced, renamed, and the directory fsynced."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self, folder: str) -> list[str]:
        directory = self.root / folder
        if not directory.is_dir():
            return []
        return sorted(f"{folder}/{entry.name}" for entry in directory.iterdir() if not entry.name.startswith("."))

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class StorageSegmentStore:
    """Any Django storage (django-storages' S3Storage for a bucket); a finished save is durable."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def names(self, folder: str) -> list[str]:
        try:
            _, files = self.storage.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(f"{folder}/{name}" for name in files)

    def read(self, name: str) -> bytes | None:
        if not self.storage.exists(name):
            return None
        with self.storage.open(name, "rb") as handle:
            return handle.read()

    def write(self, name: str, data: bytes) -> None:
        saved = self.storage.save(name, ContentFile(data))
        if saved != name:
            raise RuntimeError(f"storage saved {name} as {saved}: enable overwriting (file_overwrite=True)")


def segment_store() -> SegmentStore:
    """The configured destination: an S3-compatible bucket when AUDIT_EXPORT_S3_BUCKET is set, else the directory."""
    if not settings.AUDIT_EXPORT_S3_BUCKET:
        return LocalSegmentStore(settings.AUDIT_EXPORT_DIR)
    from storages.backends.s3 import S3Storage

    options: dict[str, Any] = {
        "bucket_name": settings.AUDIT_EXPORT_S3_BUCKET,
        "location": settings.AUDIT_EXPORT_S3_PREFIX,
        "file_overwrite": True,
        "default_acl": None,
    }
    if settings.AUDIT_EXPORT_S3_ENDPOINT_URL:
        options["endpoint_url"] = settings.AUDIT_EXPORT_S3_ENDPOINT_URL
    if settings.AUDIT_EXPORT_S3_REGION:
        options["region_name"] = settings.AUDIT_EXPORT_S3_REGION
    if settings.AUDIT_EXPORT_S3_ACCESS_KEY_ID:
        options["access_key"] = settings.AUDIT_EXPORT_S3_ACCESS_KEY_ID
        options["secret_key"] = settings.AUDIT_EXPORT_S3_SECRET_ACCESS_KEY
    return StorageSegmentStore(S3Storage(**options))


def chain_folder(chain: str) -> str:
    return chain.replace(":", "-")


def segment_name(chain: str, first_seq: int, last_seq: int) -> str:
    folder = chain_folder(chain)
    return f"{folder}/{folder}-{first_seq:012d}-{last_seq:012d}.jsonl"


def manifest_name(data_name: str) -> str:
    return data_name.removesuffix(".jsonl") + ".manifest.json"


_SEGMENT = re.compile(r"-(\d{12})-(\d{12})\.jsonl$")


@dataclass
class ExportResult:
    segments: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "adopted": self.adopted, "events": self.events}


def _segment_rows(chain: str, first_seq: int, last_seq: int | None, limit: int) -> list[dict[str, Any]]:
    events = AuditEvent.objects.filter(chain=chain, seq__gte=first_seq).order_by("seq")
    if last_seq is not None:
        events = events.filter(seq__lte=last_seq)
    return [event_row(values) for values in events.values(*ROW_FIELDS)[:limit]]


def _segment_build(chain: str, rows: list[dict[str, Any]], prev_hash: str) -> tuple[str, bytes, bytes]:
    name = segment_name(chain, rows[0]["seq"], rows[-1]["seq"])
    manifest = Manifest(file_name=name.rsplit("/", 1)[-1], file_format="jsonl", filters={"chain": chain})
    lines = []
    for row in rows:
        manifest.add_row(row)
        lines.append(manifest.add_bytes(jsonl_line(row)))
    data = b"".join(lines)
    linked = rows[0]["prev_hash"] == prev_hash and all(
        later["seq"] == earlier["seq"] + 1 and later["prev_hash"] == earlier["hash"]
        for earlier, later in pairwise(rows)
    )
    if not linked:
        logger.error("audit export: chain %s does not link up in %s; exported as stored, run audit_verify", chain, name)
    document = manifest.document(chain=chain, previous_hash=prev_hash, links_verified=linked)
    return name, data, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _pending_segment(store: SegmentStore, chain: str, first_seq: int) -> tuple[str, int] | None:
    """A segment starting at ``first_seq`` written by a run that died before its checkpoint."""
    for name in store.names(chain_folder(chain)):
        match = _SEGMENT.search(name)
        if match and int(match.group(1)) == first_seq:
            return name, int(match.group(2))
    return None


def _segment_adopt(store: SegmentStore, chain: str, checkpoint: AuditExportCheckpoint, name: str, last: int) -> None:
    """Finish a segment a crashed run left behind (same name, same range), so no event is written twice."""
    rows = _segment_rows(chain, checkpoint.last_seq + 1, last, last - checkpoint.last_seq)
    if not rows or rows[-1]["seq"] != last:
        raise RuntimeError(f"audit export: {name} covers events that are not in the database")
    _, data, manifest = _segment_build(chain, rows, checkpoint.last_hash)
    if store.read(name) != data:
        store.write(name, data)  # an interrupted write: rewrite exactly the same range
    stored = store.read(manifest_name(name))
    if stored is None or json.loads(stored).get("sha256") != json.loads(manifest)["sha256"]:
        store.write(manifest_name(name), manifest)
    _checkpoint_advance(checkpoint, rows[-1], name)


def _checkpoint_advance(checkpoint: AuditExportCheckpoint, last_row: dict[str, Any], name: str) -> None:
    checkpoint.last_seq = last_row["seq"]
    checkpoint.last_hash = last_row["hash"]
    checkpoint.last_created_at = AuditEvent.objects.values_list("created_at", flat=True).get(id=last_row["id"])
    checkpoint.segment = name
    checkpoint.save()


def _segment_export(store: SegmentStore, chain: str, limit: int, result: ExportResult) -> bool:
    """Write the next segment of ``chain``; False when the chain is fully exported."""
    with transaction.atomic():
        AuditExportCheckpoint.objects.bulk_create([AuditExportCheckpoint(chain=chain)], ignore_conflicts=True)
        checkpoint = AuditExportCheckpoint.objects.select_for_update().get(chain=chain)
        pending = _pending_segment(store, chain, checkpoint.last_seq + 1)
        if pending is not None:
            name, last = pending
            first = checkpoint.last_seq + 1
            _segment_adopt(store, chain, checkpoint, name, last)
            result.adopted.append(name)
            result.events += last - first + 1
            return True
        rows = _segment_rows(chain, checkpoint.last_seq + 1, None, limit)
        if not rows:
            return False
        name, data, manifest = _segment_build(chain, rows, checkpoint.last_hash or GENESIS_HASH)
        store.write(name, data)
        store.write(manifest_name(name), manifest)
        _checkpoint_advance(checkpoint, rows[-1], name)
        result.segments.append(name)
        result.events += len(rows)
        return True


def audit_export_run(*, store: SegmentStore | None = None, segment_events: int | None = None) -> ExportResult:
    """Export every chain's events since its checkpoint; safe to run concurrently and to retry."""
    store = store or segment_store()
    limit = segment_events or settings.AUDIT_EXPORT_SEGMENT_EVENTS
    result = ExportResult()
    for chain in audit_chain_names():
        while _segment_export(store, chain, limit, result):
            pass
    return result
