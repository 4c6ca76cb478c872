"""The audit trail tells the truth: a history rewritten inside the database is found against the export.

The attacks are those of someone who controls the database (the test database user is a
superuser): rewriting an event and every hash after it, or emptying the table and
re-inserting all but the newest events with the chain head moved back. Against itself the
chain then holds; against the write-once export store it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.chain import event_hash
from audit.durable import audit_export_run
from audit.guard import guard_install, guard_problems, guard_remove
from audit.models import AuditEvent
from audit.segment_store import LocalSegmentStore, SegmentExists
from tests.audit.chains import record, verify

pytestmark = pytest.mark.django_db(transaction=True)
CHAIN = "tenant:4"


@pytest.fixture
def export_dir(tmp_path, settings) -> Path:
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit-export"
    return settings.AUDIT_EXPORT_DIR


@contextmanager
def database_owner() -> Iterator[Callable[[str, list[object]], None]]:
    """A superuser (or table owner) who switches the guard off, works, and switches it on again.

    On PostgreSQL the triggers fire under session_replication_role = replica now, so the
    attacker also disables them; they are put back as they were, leaving nothing for
    guard_problems to see.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
            cursor.execute("ALTER TABLE audit_auditchainhead DISABLE TRIGGER USER")
        else:
            guard_remove(cursor, connection.vendor)

    def run(sql: str, params: list[object]) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    try:
        yield run
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("RESET session_replication_role")
            guard_install(cursor, connection.vendor)
            assert guard_problems(cursor, connection.vendor) == []


def rewrite_and_rehash(run: Callable[[str, list[object]], None], seq: int) -> None:
    """Change event ``seq`` of CHAIN and recompute every hash after it, and the head: the chain holds again."""
    events = list(AuditEvent.objects.filter(chain=CHAIN, seq__gte=seq).order_by("seq"))
    prev = AuditEvent.objects.get(chain=CHAIN, seq=seq - 1).hash if seq > 1 else "0" * 64
    events[0].actor = "user:mallory"
    for event in events:
        event.prev_hash = prev
        event.hash = prev = event_hash(event.chained_fields())
        run(
            "UPDATE audit_auditevent SET actor = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [event.actor, event.prev_hash, event.hash, event.pk],
        )
    run("UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", [prev, CHAIN])


def truncate_and_reinsert_all_but_the_newest(
    run: Callable[[str, list[object]], None], newest: int, *, checkpoint_wiped: bool = True
) -> None:
    rows = list(AuditEvent.objects.order_by("id").values())
    keep = [row for row in rows if not (row["chain"] == CHAIN and row["seq"] > len(rows) - newest)]
    table = "audit_auditevent"
    run(f"TRUNCATE {table}" if connection.vendor == "postgresql" else f"DELETE FROM {table}", [])
    AuditEvent.objects.bulk_create([AuditEvent(**row) for row in keep])
    last = max((row for row in keep if row["chain"] == CHAIN), key=lambda row: row["seq"])
    run("UPDATE audit_auditchainhead SET seq = %s, hash = %s WHERE chain = %s", [last["seq"], last["hash"], CHAIN])
    if checkpoint_wiped:
        run("DELETE FROM audit_auditexportcheckpoint", [])  # the exporter's bookkeeping, wiped too


def test_a_rewritten_and_rehashed_history_is_reported_against_the_export(export_dir):
    record(6)
    record(2, tenant_id=5)
    audit_export_run()
    with database_owner() as run:
        rewrite_and_rehash(run, 3)
    alone, _, status = verify("--no-anchor")
    assert status == 0 and f"{CHAIN}: ok, 6 events" in alone  # the chain alone cannot tell
    out, _, status = verify()
    assert status == 1
    assert f"{CHAIN}: CHANGED since exported: 4 events, seq 3, 4, 5, 6" in out
    assert "tenant:5: ok, 2 events; anchored to seq 2" in out


def test_truncating_and_reinserting_all_but_the_newest_events_is_reported_against_the_export(export_dir):
    record(6)
    audit_export_run()
    with database_owner() as run:
        truncate_and_reinsert_all_but_the_newest(run, 2)
    alone, _, status = verify("--no-anchor")
    assert status == 0 and f"{CHAIN}: ok, 4 events" in alone
    out, _, status = verify()
    assert status == 1
    assert f"{CHAIN}: MISSING since exported: 2 events, seq 5-6" in out
    assert f"{CHAIN}: TRUNCATED: the chain ends at seq 4, the export holds it to seq 6" in out


def test_a_chain_removed_whole_from_the_database_is_reported(export_dir):
    record(3)
    audit_export_run()
    with database_owner() as run:
        run("DELETE FROM audit_auditevent WHERE chain = %s", [CHAIN])
        run("DELETE FROM audit_auditchainhead WHERE chain = %s", [CHAIN])
    out, _, status = verify()
    assert status == 1 and f"{CHAIN}: MISSING since exported: 3 events, seq 1-3" in out


def test_verify_says_how_far_the_anchor_reaches(export_dir):
    record(3)
    audit_export_run()
    record(2)
    out, _, status = verify()
    assert status == 0
    assert f"{CHAIN}: ok, 5 events; anchored to seq 3 (exported " in out
    assert "the 2 events after it are protected only by the in-database chain" in out
    record(1, tenant_id=9)
    out, _, _ = verify("--tenant", "9")
    assert "tenant:9: ok, 1 events; not exported yet: protected only by the in-database chain" in out


def test_verify_reports_a_segment_altered_or_removed_in_the_store(export_dir):
    record(6)
    audit_export_run(segment_events=2)
    folder = export_dir / "tenant-4"
    segment = folder / "tenant-4-000000000001-000000000002.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b"probe", b"PROBE"))
    (folder / "tenant-4-000000000003-000000000004.jsonl").unlink()
    out, _, status = verify()
    assert status == 1
    assert "ANCHOR: tenant-4/tenant-4-000000000001-000000000002.jsonl differs from its manifest's SHA-256" in out
    assert "ANCHOR: no segment holds events 3-4 (a segment removed)" in out


def test_the_store_never_replaces_a_segment(tmp_path):
    store = LocalSegmentStore(tmp_path)
    store.write("tenant-1/a.jsonl", b"anchored")
    with pytest.raises(SegmentExists):
        store.write("tenant-1/a.jsonl", b"forged")
    assert (tmp_path / "tenant-1" / "a.jsonl").read_bytes() == b"anchored"
    assert [path.name for path in (tmp_path / "tenant-1").iterdir()] == ["a.jsonl"]  # no temporary file left


def test_a_rewritten_history_never_overwrites_or_extends_the_anchored_segments(export_dir):
    record(5)
    audit_export_run()
    before = {path: path.read_bytes() for path in export_dir.rglob("*") if path.is_file()}
    with database_owner() as run:
        rewrite_and_rehash(run, 3)
        run("DELETE FROM audit_auditexportcheckpoint", [])  # so the exporter would start over
    result = audit_export_run()
    assert result.segments == [] and result.adopted == []
    [refused] = result.refused
    assert refused.startswith(
        f"{CHAIN}: the database no longer matches the stored tenant-4/tenant-4-000000000001-000000000005.jsonl: "
        "event 3 has another hash in the database"
    )
    record(2)  # new events do not get the forged history exported either
    assert audit_export_run().refused
    assert {path: path.read_bytes() for path in export_dir.rglob("*") if path.is_file()} == before
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("audit_export", stdout=StringIO(), stderr=err)
    assert "REFUSED tenant:4: the database no longer matches" in err.getvalue()


@pytest.mark.parametrize("checkpoint_wiped", [True, False])
def test_the_export_stops_when_the_database_no_longer_continues_the_stored_chain(export_dir, checkpoint_wiped):
    record(4)
    audit_export_run()
    with database_owner() as run:
        truncate_and_reinsert_all_but_the_newest(run, 1, checkpoint_wiped=checkpoint_wiped)
    record(3)  # seq 4 again, and later ones: a history other than the one stored
    result = audit_export_run()
    assert result.segments == [] and len(result.refused) == 1
    if checkpoint_wiped:
        assert (
            "no longer matches the stored tenant-4/tenant-4-000000000001-000000000004.jsonl: event 4"
            in (result.refused[0])
        )
    else:
        assert "event 4, the last one stored, has another hash" in result.refused[0]


def test_the_export_continues_after_the_segment_that_ends_last_even_when_segments_overlap(export_dir):
    record(10)
    audit_export_run()
    folder = export_dir / "tenant-4"
    whole = (folder / "tenant-4-000000000001-000000000010.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "tenant-4-000000000002-000000000005.jsonl").write_bytes(b"".join(whole[1:5]))  # an extra copy
    record(2)
    assert audit_export_run().segments == ["tenant-4/tenant-4-000000000011-000000000012.jsonl"]
