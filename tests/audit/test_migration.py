"""Upgrading a database whose audit events predate the chain: the migration links them."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.selectors import audit_chain_verify
from audit.services import audit_record

pytestmark = pytest.mark.django_db(transaction=True)
BEFORE, AFTER = [("audit", "0001_initial")], [("audit", "0002_hash_chain")]


def latest() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return [key for key in executor.loader.graph.leaf_nodes() if key[0] == "audit"]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_existing_events_are_chained_in_id_order_and_guarded():
    try:
        old_apps = migrate(BEFORE)
        OldEvent = old_apps.get_model("audit", "AuditEvent")
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        for n in range(6):
            event = OldEvent.objects.create(
                actor=f"user:{n}", action="legacy", tenant_id=(n % 2) or None, ip="::ffff:10.0.0.1", details={"n": n}
            )
            OldEvent.objects.filter(pk=event.pk).update(created_at=start + dt.timedelta(minutes=n))
    finally:
        migrate(AFTER)
    assert audit_chain_verify("tenant:1").events == 3 and audit_chain_verify("tenant:1").ok
    assert audit_chain_verify("platform").events == 3 and audit_chain_verify("platform").ok
    migrate(latest())  # the model below writes the columns of the latest migration
    newer = audit_record(actor="user:new", action="after.upgrade", tenant_id=1)
    assert newer.seq == 4 and audit_chain_verify("tenant:1").ok
    try:
        with pytest.raises(Exception, match="append-only"), connection.cursor() as cursor:
            cursor.execute("DELETE FROM audit_auditevent")
    finally:
        migrate(latest())  # later tests run on the whole guard
