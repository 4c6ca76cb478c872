"""``flush`` that also empties the append-only audit table on SQLite.

On PostgreSQL ``flush`` truncates, which row triggers do not see; on SQLite it deletes
row by row, which the audit guard refuses. A deliberate wipe of the whole database
should work the same on both, so on SQLite the guard is lifted for the flush only.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import flush
from django.db import connections

from audit.guard import guard_install, guard_remove


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        connection = connections[options["database"]]
        if connection.vendor != "sqlite":
            super().handle(**options)
            return
        with connection.cursor() as cursor:
            guard_remove(cursor, connection.vendor)
        try:
            super().handle(**options)
        finally:
            with connection.cursor() as cursor:
                if "audit_auditevent" in connection.introspection.table_names(cursor):
                    guard_install(cursor, connection.vendor)
