"""The durable export: segments + manifests, checkpointed, exactly once through crashes and retries."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit import durable
from audit.durable import audit_export_run
from audit.models import AuditEvent, AuditExportCheckpoint
from audit.segment_store import LocalSegmentStore
from audit.selectors import audit_export_lag_seconds
from audit.services import audit_record
from audit.tasks import audit_export

pytestmark = pytest.mark.django_db(transaction=True)


class Crash(Exception):
    pass


@pytest.fixture
def export_dir(tmp_path, settings) -> Path:
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit-export"
    return settings.AUDIT_EXPORT_DIR


def record(count: int, tenant_id: int | None = 1) -> None:
    for n in range(count):
        audit_record(actor="user:a", action="probe", tenant_id=tenant_id, details={"n": n})


def exported_ids(root: Path) -> list[int]:
    """Every event id in every segment, in file order (duplicates kept, so they show)."""
    ids = []
    for segment in sorted(root.glob("*/*.jsonl")):
        ids += [json.loads(line)["id"] for line in segment.read_text().splitlines()]
    return ids


def all_ids() -> list[int]:
    return sorted(AuditEvent.objects.values_list("id", flat=True))


def test_segments_and_manifests_per_chain_verify_offline_end_to_end(export_dir, verifier):
    record(7, tenant_id=1)
    record(3, tenant_id=None)
    result = audit_export_run(segment_events=3)
    assert result.events == 10
    assert sorted(path.name for path in (export_dir / "tenant-1").iterdir()) == [
        "tenant-1-000000000001-000000000003.jsonl",
        "tenant-1-000000000001-000000000003.manifest.json",
        "tenant-1-000000000004-000000000006.jsonl",
        "tenant-1-000000000004-000000000006.manifest.json",
        "tenant-1-000000000007-000000000007.jsonl",
        "tenant-1-000000000007-000000000007.manifest.json",
    ]
    assert sorted(exported_ids(export_dir)) == all_ids()
    assert verifier.main([str(export_dir)]) == 0
    checkpoint = AuditExportCheckpoint.objects.get(chain="tenant:1")
    assert checkpoint.last_seq == 7 and checkpoint.segment.endswith("000000000007.jsonl")
    record(2, tenant_id=1)
    assert audit_export_run(segment_events=3).segments == ["tenant-1/tenant-1-000000000008-000000000009.jsonl"]
    assert verifier.main([str(export_dir)]) == 0


def test_a_retried_run_writes_nothing_twice(export_dir):
    record(5)
    assert audit_export_run().events == 5
    before = {path: path.read_bytes() for path in export_dir.rglob("*") if path.is_file()}
    nothing = {"segments": [], "adopted": [], "events": 0, "refused": []}
    assert audit_export_run().as_dict() == nothing
    assert audit_export.apply().get() == nothing
    assert {path: path.read_bytes() for path in export_dir.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("crash_point", ["after_data", "after_manifest"])
def test_a_crash_between_write_and_checkpoint_loses_and_duplicates_nothing(
    export_dir, monkeypatch, verifier, crash_point
):
    record(4)
    real_write = LocalSegmentStore.write

    def crashing_write(self, name, data):
        real_write(self, name, data)
        if crash_point == "after_data" and name.endswith(".jsonl"):
            raise Crash("killed after the data file")

    def crashing_advance(*args, **kwargs):
        raise Crash("killed before the checkpoint")

    monkeypatch.setattr(LocalSegmentStore, "write", crashing_write)
    if crash_point == "after_manifest":
        monkeypatch.setattr(durable, "_checkpoint_advance", crashing_advance)
    with pytest.raises(Crash):
        audit_export_run()
    assert not AuditExportCheckpoint.objects.filter(chain="tenant:1", last_seq__gt=0).exists()
    monkeypatch.undo()
    record(3)  # more events arrive before the retry
    result = audit_export_run()
    assert result.adopted == ["tenant-1/tenant-1-000000000001-000000000004.jsonl"]
    assert result.segments == ["tenant-1/tenant-1-000000000005-000000000007.jsonl"]
    assert exported_ids(export_dir) == all_ids()
    assert verifier.main([str(export_dir)]) == 0


def test_the_offline_check_of_the_directory_catches_a_missing_segment(export_dir, verifier):
    record(6)
    audit_export_run(segment_events=2)
    (export_dir / "tenant-1" / "tenant-1-000000000003-000000000004.jsonl").unlink()
    (export_dir / "tenant-1" / "tenant-1-000000000003-000000000004.manifest.json").unlink()
    assert verifier.main([str(export_dir)]) == 1


def test_export_lag_is_zero_when_caught_up_and_the_age_of_the_frontier_otherwise(export_dir):
    assert audit_export_lag_seconds() == 0.0
    record(2)
    now = timezone.now()
    assert 0 <= audit_export_lag_seconds(now) < 60
    assert audit_export_lag_seconds(now + dt.timedelta(minutes=10)) >= 600
    audit_export_run()
    assert audit_export_lag_seconds(now + dt.timedelta(minutes=10)) == 0.0
    newest = AuditEvent.objects.order_by("-id").first().created_at
    record(1)
    assert audit_export_lag_seconds(newest + dt.timedelta(seconds=30)) == pytest.approx(30, abs=0.01)


def test_the_command_runs_the_same_export(export_dir):
    record(3, tenant_id=None)
    out = StringIO()
    call_command("audit_export", stdout=out)
    assert "wrote platform/platform-000000000001-000000000003.jsonl" in out.getvalue()
    assert "3 events exported in 1 segments" in out.getvalue()
