"""``flush`` that also empties the append-only audit table on SQLite, and survives a
concurrent writer on PostgreSQL.

On PostgreSQL ``flush`` truncates, which row triggers do not see; on SQLite it deletes
row by row, which the audit guard refuses. A deliberate wipe of the whole database
should work the same on both, so on SQLite the guard is lifted for the flush only.

A TRUNCATE of every table can deadlock with a server process that is writing its batched
usage and audit records at that moment (the test suite flushes while live servers run);
PostgreSQL then aborts one side. The flush is all-or-nothing, so it is simply tried again.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError
from django.core.management.commands import flush
from django.db import OperationalError, connections

from audit.guard import guard_install, guard_remove

DEADLOCK_RETRIES = 5


def _is_deadlock(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OperationalError) and "deadlock detected" in str(exc):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        connection = connections[options["database"]]
        if connection.vendor != "sqlite":
            self._flush_retrying(**options)
            return
        with connection.cursor() as cursor:
            guard_remove(cursor, connection.vendor)
        try:
            super().handle(**options)
        finally:
            with connection.cursor() as cursor:
                if "audit_auditevent" in connection.introspection.table_names(cursor):
                    guard_install(cursor, connection.vendor)

    def _flush_retrying(self, **options: Any) -> None:
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                super().handle(**options)
                return
            except (CommandError, OperationalError) as exc:
                if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc):
                    raise
                time.sleep(0.1 * (attempt + 1))
