"""The hash chain: events link per tenant, the database refuses edits, and tampering is found."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from audit.chain import GENESIS_HASH, event_hash
from audit.models import AuditChainHead, AuditEvent
from audit.selectors import audit_chain_verify
from audit.services import AuditEntry, audit_record, audit_record_deferred, deferred_audit

pytestmark = pytest.mark.django_db(transaction=True)


def verify(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_events_link_into_one_chain_per_tenant_and_a_platform_chain():
    first = audit_record(actor="user:a", action="t.one", tenant_id=7, details={"n": (1, 2)})
    platform = audit_record(actor="system", action="p.one", ip="2001:db8:0:0:0:0:0:1")
    second = audit_record(actor="user:a", action="t.two", tenant_id=7)
    assert (first.chain, first.seq, first.prev_hash) == ("tenant:7", 1, GENESIS_HASH)
    assert (second.chain, second.seq, second.prev_hash) == ("tenant:7", 2, first.hash)
    assert (platform.chain, platform.seq) == ("platform", 1)
    stored = AuditEvent.objects.get(pk=first.pk)
    assert stored.details == {"n": [1, 2]}
    assert event_hash(stored.chained_fields()) == stored.hash == first.hash
    assert AuditEvent.objects.get(pk=platform.pk).hash == event_hash(
        AuditEvent.objects.get(pk=platform.pk).chained_fields()
    )
    assert AuditChainHead.objects.get(chain="tenant:7").hash == second.hash
    assert "All audit chains verified" in verify()


def test_deferred_batches_are_chained_in_order():
    for n in range(5):
        deferred_audit._rows.append(AuditEntry(actor="key:sk-x", action="auth.failure", details={"n": n}))
    deferred_audit._rows.append(AuditEntry(actor="key:sk-x", action="quota.refused", tenant_id=3))
    assert deferred_audit.flush_now() == 6
    audit_record_deferred(AuditEntry(actor="key:sk-x", action="auth.failure"))  # outside a loop: written at once
    platform = list(AuditEvent.objects.filter(chain="platform").order_by("seq"))
    assert [event.seq for event in platform] == [1, 2, 3, 4, 5, 6]
    assert [event.details.get("n") for event in platform] == [0, 1, 2, 3, 4, None]
    assert audit_chain_verify("platform").ok and audit_chain_verify("tenant:3").ok


def test_a_deferred_batch_written_again_after_a_lost_commit_acknowledgement_appends_nothing_twice():
    entries = [AuditEntry(actor="key:sk-x", action="auth.failure", tenant_id=3, details={"n": n}) for n in range(4)]
    deferred_audit._write(entries)
    # The commit happened but its acknowledgement was lost: the writer keeps the rows and
    # writes them again, with one more that arrived meanwhile (and one listed twice).
    late = AuditEntry(actor="key:sk-x", action="auth.failure", tenant_id=3, details={"n": 4})
    deferred_audit._write([*entries, late, late])
    events = list(AuditEvent.objects.filter(chain="tenant:3").order_by("seq"))
    assert [event.details["n"] for event in events] == [0, 1, 2, 3, 4]
    assert [event.seq for event in events] == [1, 2, 3, 4, 5]
    assert audit_chain_verify("tenant:3").ok


def test_the_database_refuses_updates_and_deletes_of_audit_rows():
    event = audit_record(actor="user:a", action="t.one", tenant_id=1)
    for sql in (
        "UPDATE audit_auditevent SET actor = 'user:mallory' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(outcome="failure")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:a"


def test_verify_reports_the_first_broken_link_of_a_row_altered_with_raw_sql(tamper):
    events = [audit_record(actor="user:a", action=f"t.{n}", tenant_id=5) for n in range(4)]
    audit_record(actor="user:b", action="other", tenant_id=6)
    tamper("UPDATE audit_auditevent SET target = 'nothing to see' WHERE id = %s", [events[2].pk])
    with pytest.raises(CommandError, match="1 audit chain"):
        verify()
    report = audit_chain_verify("tenant:5")
    assert (report.broken_seq, report.broken_id, report.events) == (3, events[2].pk, 2)
    assert "altered" in report.reason
    assert "tenant:6: ok" in verify("--tenant", "6")


def test_verify_catches_a_rehashed_row_a_removed_row_and_a_removed_tail(tamper):
    events = [audit_record(actor="user:a", action=f"t.{n}", tenant_id=8) for n in range(5)]
    forged = events[1].chained_fields() | {"actor": "user:mallory"}
    tamper(
        "UPDATE audit_auditevent SET actor = %s, hash = %s WHERE id = %s",
        ["user:mallory", event_hash(forged), events[1].pk],
    )
    report = audit_chain_verify("tenant:8")
    assert report.broken_seq == 3 and "prev_hash" in report.reason
    tamper("DELETE FROM audit_auditevent WHERE id IN (%s, %s)", [events[1].pk, events[4].pk])
    assert audit_chain_verify("tenant:8").broken_seq == 2
    tamper("DELETE FROM audit_auditevent WHERE id > %s", [events[0].pk])
    report = audit_chain_verify("tenant:8")
    assert not report.ok and "head" in report.reason


def test_verify_names_a_tenant_by_slug(owner):
    assert f"tenant:{owner.pk}: ok" in verify("--tenant", "owner")
    with pytest.raises(CommandError, match="No tenant"):
        verify("--tenant", "nobody")


def test_concurrent_writers_never_fork_a_chain(postgres_only):
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                if n % 5 == 4:
                    deferred_audit._write(
                        [AuditEntry(actor=f"w{worker}", action="batch", tenant_id=42) for _ in range(3)]
                    )
                else:
                    audit_record(actor=f"w{worker}", action="single", tenant_id=42 if n % 2 else None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    total = AuditEvent.objects.count()
    assert total == threads * (per_thread // 5 * 3 + per_thread - per_thread // 5)
    for chain in ("tenant:42", "platform"):
        seqs = list(AuditEvent.objects.filter(chain=chain).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
        report = audit_chain_verify(chain)
        assert report.ok, report.reason
    assert "All audit chains verified" in verify()
