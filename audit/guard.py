"""The database guard of the audit record: events append-only, chain heads forward-only, no TRUNCATE.

Installed by migrations in two steps (``0002_hash_chain``: version 1, ``0003_guard_heads``:
version 2), so each migration installs and removes exactly what it added.

PostgreSQL (version 2 in place):

- ``audit_event_append_only``: refuses UPDATE and DELETE of ``audit_auditevent`` rows;
- ``audit_event_no_truncate``: refuses TRUNCATE of ``audit_auditevent``;
- ``audit_head_forward_only``: refuses DELETE of a chain head and any UPDATE that changes
  its chain, moves ``seq`` backwards, changes ``hash`` without advancing ``seq``, or points
  it at an event that does not exist;
- ``audit_head_no_truncate``: refuses TRUNCATE of ``audit_auditchainhead``.

All four are ``ENABLE ALWAYS`` triggers: they fire under ``session_replication_role =
replica`` too (a plain trigger does not), so only a role that owns the tables (or a
superuser) can get past them, by disabling or dropping them — which ``guard_problems``
reports. ``manage.py flush`` (a deliberate wipe of the whole database) lifts the TRUNCATE
triggers inside its own transaction (``guard_suspended``).

SQLite has no TRUNCATE and no replication role; a ``DELETE`` of every row fires the row
triggers. It gets the same row rules: events refuse UPDATE and DELETE, heads refuse DELETE
and the same UPDATEs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction

_PG_V1 = [
    """
    CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit events are append-only: % of audit_auditevent refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent",
    "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent "
    "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()",
]
_PG_V1_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent",
    "DROP FUNCTION IF EXISTS audit_event_append_only()",
]
_PG_V2 = [
    # TG_TABLE_NAME in the message: one function serves both tables.
    """
    CREATE OR REPLACE FUNCTION audit_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit record is append-only: TRUNCATE of % refused', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'audit chain heads only move forward: DELETE of audit_auditchainhead refused'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.chain <> OLD.chain OR NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.hash <> OLD.hash) THEN
            RAISE EXCEPTION 'audit chain heads only move forward: % from (%, %) to (%, %) refused',
                OLD.chain, OLD.seq, left(OLD.hash, 16), NEW.seq, left(NEW.hash, 16)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NEW.seq > OLD.seq AND NOT EXISTS (
            SELECT 1 FROM audit_auditevent WHERE chain = NEW.chain AND seq = NEW.seq AND hash = NEW.hash
        ) THEN
            RAISE EXCEPTION 'audit chain heads only move forward: % has no event % with that hash',
                NEW.chain, NEW.seq USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent",
    "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()",
    "DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_auditchainhead",
    "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_auditchainhead "
    "FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()",
    "DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_auditchainhead",
    "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_auditchainhead "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()",
    # Fire whatever the session's replication role (a plain trigger is skipped under 'replica').
    "ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_append_only",
    "ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_truncate",
    "ALTER TABLE audit_auditchainhead ENABLE ALWAYS TRIGGER audit_head_forward_only",
    "ALTER TABLE audit_auditchainhead ENABLE ALWAYS TRIGGER audit_head_no_truncate",
]
_PG_V2_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent",
    "DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_auditchainhead",
    "DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_auditchainhead",
    "DROP FUNCTION IF EXISTS audit_refuse_truncate()",
    "DROP FUNCTION IF EXISTS audit_head_forward_only()",
    "ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only",
]
_SQLITE_V1 = [
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_update BEFORE UPDATE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE of audit_auditevent refused'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_delete BEFORE DELETE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE of audit_auditevent refused'); END",
]
_SQLITE_V1_REMOVE = ["DROP TRIGGER IF EXISTS audit_event_no_update", "DROP TRIGGER IF EXISTS audit_event_no_delete"]
_SQLITE_V2 = [
    "CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_auditchainhead "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward: DELETE of audit_auditchainhead refused'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_auditchainhead "
    "WHEN NEW.chain <> OLD.chain OR NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.hash <> OLD.hash) "
    "OR (NEW.seq > OLD.seq AND NOT EXISTS (SELECT 1 FROM audit_auditevent "
    "WHERE chain = NEW.chain AND seq = NEW.seq AND hash = NEW.hash)) "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward: UPDATE of audit_auditchainhead refused'); END",
]
_SQLITE_V2_REMOVE = ["DROP TRIGGER IF EXISTS audit_head_no_delete", "DROP TRIGGER IF EXISTS audit_head_forward_only"]

LATEST = 2
_INSTALL = {("postgresql", 1): _PG_V1, ("postgresql", 2): _PG_V2, ("sqlite", 1): _SQLITE_V1, ("sqlite", 2): _SQLITE_V2}
_REMOVE = {
    ("postgresql", 1): _PG_V1_REMOVE,
    ("postgresql", 2): _PG_V2_REMOVE,
    ("sqlite", 1): _SQLITE_V1_REMOVE,
    ("sqlite", 2): _SQLITE_V2_REMOVE,
}

# Trigger name -> table, for the presence check (PostgreSQL wants them ENABLE ALWAYS: 'A').
_PG_TRIGGERS = {
    "audit_event_append_only": "audit_auditevent",
    "audit_event_no_truncate": "audit_auditevent",
    "audit_head_forward_only": "audit_auditchainhead",
    "audit_head_no_truncate": "audit_auditchainhead",
}
_SQLITE_TRIGGERS = ("audit_event_no_update", "audit_event_no_delete", "audit_head_no_delete", "audit_head_forward_only")


def guard_install(cursor: Any, vendor: str, *, versions: tuple[int, ...] = tuple(range(1, LATEST + 1))) -> None:
    """Install the triggers of ``versions`` (other databases get none: say so in deployment docs)."""
    for version in versions:
        for statement in _INSTALL.get((vendor, version), []):
            cursor.execute(statement)


def guard_remove(cursor: Any, vendor: str, *, versions: tuple[int, ...] = tuple(range(LATEST, 0, -1))) -> None:
    for version in versions:
        for statement in _REMOVE.get((vendor, version), []):
            cursor.execute(statement)


def guard_problems(cursor: Any, vendor: str) -> list[str]:
    """What is missing from the guard or switched off (a table rebuild on SQLite drops triggers)."""
    if vendor == "postgresql":
        cursor.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgname = ANY(%s) AND NOT tgisinternal",
            [list(_PG_TRIGGERS)],
        )
        found = {name: str(state) for name, state in cursor.fetchall()}
        problems = []
        for name, table in _PG_TRIGGERS.items():
            state = found.get(name)
            if state is None:
                problems.append(f"trigger {name} on {table} is missing")
            elif state == "D":
                problems.append(f"trigger {name} on {table} is disabled")
            elif state != "A":
                problems.append(f"trigger {name} on {table} is not ENABLE ALWAYS (skipped under a replica role)")
        return problems
    if vendor == "sqlite":
        cursor.execute(
            f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND name IN ({', '.join('?' * 4)})",
            list(_SQLITE_TRIGGERS),
        )
        present = {row[0] for row in cursor.fetchall()}
        return [f"trigger {name} is missing" for name in _SQLITE_TRIGGERS if name not in present]
    return [f"no guard for {vendor}: nothing stops UPDATE, DELETE or TRUNCATE of the audit tables"]


def guard_present(cursor: Any, vendor: str) -> bool:
    """Whether every trigger is in place and enabled."""
    return not guard_problems(cursor, vendor)


@contextmanager
def guard_suspended(connection: Any) -> Iterator[None]:
    """Lift the guard for a deliberate wipe of the whole database (``manage.py flush``) only.

    PostgreSQL: the TRUNCATE triggers in place are disabled and enabled again inside one
    transaction with the wipe, so a failed wipe leaves them on (it takes a role owning the
    tables, as any trigger change does). SQLite deletes row by row: the audit tables'
    triggers are dropped for the wipe and created again exactly as they were.
    """
    if connection.vendor == "postgresql":
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE t.tgname IN ('audit_event_no_truncate', 'audit_head_no_truncate') AND NOT t.tgisinternal"
            )
            lifted = [(str(table), str(name)) for table, name in cursor.fetchall()]
            for table, name in lifted:
                cursor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{name}"')
            yield
            for table, name in lifted:
                cursor.execute(f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER "{name}"')
        return
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name IN ('audit_auditevent', 'audit_auditchainhead')"
        )
        saved = cursor.fetchall()
        for name, _ in saved:
            cursor.execute(f'DROP TRIGGER IF EXISTS "{name}"')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for _, sql in saved:
                cursor.execute(sql)
