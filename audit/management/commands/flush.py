"""``flush`` that also empties the guarded audit tables, and survives a concurrent writer on PostgreSQL.

The audit tables refuse TRUNCATE (PostgreSQL) and row deletion (both databases). A
deliberate wipe of the whole database should still work the same on both, so the guard
is lifted for the flush only (``audit.guard.guard_suspended``: on PostgreSQL in the same
transaction as the TRUNCATE, so a failed flush leaves the guard on).

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

from audit.guard import guard_suspended

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
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                with guard_suspended(connection):
                    super().handle(**options)
                return
            except (CommandError, OperationalError) as exc:
                if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc):
                    raise
                time.sleep(0.1 * (attempt + 1))
