"""The database guard that makes audit rows append-only: triggers refusing UPDATE and DELETE."""

from __future__ import annotations

from typing import Any

PG_GUARD = [
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
PG_UNGUARD = [
    "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent",
    "DROP FUNCTION IF EXISTS audit_event_append_only()",
]
SQLITE_GUARD = [
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_update BEFORE UPDATE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE of audit_auditevent refused'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_delete BEFORE DELETE ON audit_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE of audit_auditevent refused'); END",
]
SQLITE_UNGUARD = ["DROP TRIGGER IF EXISTS audit_event_no_update", "DROP TRIGGER IF EXISTS audit_event_no_delete"]

_GUARD = {"postgresql": PG_GUARD, "sqlite": SQLITE_GUARD}
_UNGUARD = {"postgresql": PG_UNGUARD, "sqlite": SQLITE_UNGUARD}


def guard_install(cursor: Any, vendor: str) -> None:
    """Install the triggers (other databases get none: say so in deployment docs)."""
    for statement in _GUARD.get(vendor, []):
        cursor.execute(statement)


def guard_remove(cursor: Any, vendor: str) -> None:
    for statement in _UNGUARD.get(vendor, []):
        cursor.execute(statement)


def guard_present(cursor: Any, vendor: str) -> bool:
    """Whether the triggers are in place and enabled (a table rebuild on SQLite drops them)."""
    if vendor == "postgresql":
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_event_append_only' AND tgenabled <> 'D'")
        return bool(cursor.fetchone()[0])
    if vendor == "sqlite":
        cursor.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
            "AND name IN ('audit_event_no_update', 'audit_event_no_delete')"
        )
        return cursor.fetchone()[0] == 2
    return False
