"""The database guard: events append-only, chain heads forward-only, no TRUNCATE, whatever the session's role."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from audit.guard import guard_install, guard_problems
from audit.models import AuditChainHead, AuditEvent
from tests.audit.chains import record, verify

pytestmark = pytest.mark.django_db(transaction=True)
CHAIN = "tenant:4"


def test_chain_heads_only_move_forward_to_events_that_exist():
    first, second = record(2)
    head = AuditChainHead.objects.filter(chain=CHAIN)
    for change in (
        {"seq": 1, "hash": first.hash},  # backwards
        {"hash": "f" * 64},  # another hash, same seq
        {"seq": 3, "hash": "e" * 64},  # forward, to no event
        {"chain": "tenant:99"},
    ):
        with pytest.raises(DatabaseError, match="only move forward"), transaction.atomic():
            head.update(**change)
    with pytest.raises(DatabaseError, match="only move forward"), transaction.atomic():
        head.delete()
    assert head.values_list("seq", "hash").get() == (2, second.hash)
    record(1)  # the writer still moves it forward
    assert head.get().seq == 3


@pytest.mark.postgres
def test_a_replica_session_no_longer_gets_past_the_guard():
    if connection.vendor != "postgresql":
        pytest.skip("session_replication_role and TRUNCATE are PostgreSQL's")
    event = record(1)[0]
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            for sql in (
                "UPDATE audit_auditevent SET actor = 'user:mallory'",
                "DELETE FROM audit_auditevent",
                "TRUNCATE audit_auditevent",
                "UPDATE audit_auditchainhead SET seq = 0",
                "TRUNCATE audit_auditchainhead",
                "TRUNCATE audit_auditevent, audit_auditchainhead CASCADE",
            ):
                with pytest.raises(DatabaseError, match=r"append-only|only move forward"), transaction.atomic():
                    cursor.execute(sql)
        finally:
            cursor.execute("RESET session_replication_role")
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:a"


@pytest.mark.postgres
def test_the_guard_check_names_a_disabled_or_weakened_trigger():
    if connection.vendor != "postgresql":
        pytest.skip("trigger modes are PostgreSQL's")
    with connection.cursor() as cursor:
        assert guard_problems(cursor, "postgresql") == []
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_truncate")
        cursor.execute("ALTER TABLE audit_auditchainhead ENABLE TRIGGER audit_head_forward_only")
        try:
            assert guard_problems(cursor, "postgresql") == [
                "trigger audit_event_no_truncate on audit_auditevent is disabled",
                "trigger audit_head_forward_only on audit_auditchainhead is not ENABLE ALWAYS "
                "(skipped under a replica role)",
            ]
            _, err, _ = verify("--no-anchor")
            assert "the audit guard is weakened: trigger audit_event_no_truncate" in err
        finally:
            guard_install(cursor, "postgresql")


def test_flush_still_empties_the_guarded_tables_and_leaves_the_guard_on():
    record(3)
    call_command("flush", interactive=False, verbosity=0)
    assert not AuditEvent.objects.exists() and not AuditChainHead.objects.exists()
    with connection.cursor() as cursor:
        assert guard_problems(cursor, connection.vendor) == []
    assert record(1)[0].seq == 1
