"""Empty the database after a transactional test in milliseconds, not the ~0.3 s of ``manage.py flush``.

``flush`` (what Django's ``TransactionTestCase`` runs after each test) empties every table
with one TRUNCATE, which on PostgreSQL makes new files for each of ~45 tables, and then
re-sends ``post_migrate`` for every app: content types, permissions and role groups are
deleted and made again each time. Most of the suite's tests are transactional (the servers
and the threads they use read committed rows), so on PostgreSQL the flushes cost minutes.

Here the tables are emptied with DELETE in one transaction, except those only ``migrate``
fills (content types, permissions, role groups), and the periodic jobs ``post_migrate``
seeds are seeded again. The first flush of a process is the full ``flush``, which counts the
kept tables' rows; a later test that changed one of them is noticed by those counts, and the
full ``flush`` runs again. The audit guard's triggers (which refuse
deleting events) are lifted inside the same transaction, as ``flush`` itself does.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management import call_command
from django.db import IntegrityError, OperationalError, connections, transaction
from django.test import TransactionTestCase

from audit.guard import guard_suspended
from llm_platform.jobs import periodic_tasks_seed

# Filled by migrate alone (and changed by no test): emptying and refilling them is the slow part.
KEPT = ("django_content_type", "auth_permission", "auth_group", "auth_group_permissions")
GUARDED = ("audit_auditevent", "audit_auditchainhead")
RETRIES = 5

_tables: dict[str, list[str]] = {}
_kept_counts: dict[str, tuple[int, ...]] = {}


def _kept_rows(cursor: Any) -> tuple[int, ...]:
    cursor.execute("SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in KEPT))
    return tuple(cursor.fetchone())


def _emptied_tables(connection: Any) -> list[str]:
    if connection.alias not in _tables:
        names = connection.introspection.django_table_names(only_existing=True, include_views=False)
        _tables[connection.alias] = sorted(set(names) - {*KEPT, "django_migrations"})
    return _tables[connection.alias]


def _delete_all(connection: Any) -> None:
    quote = connection.ops.quote_name
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Foreign keys are checked at the commit, when every table is empty.
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            cursor.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relname = ANY(%s) AND NOT t.tgisinternal",
                [list(GUARDED)],
            )
            triggers = cursor.fetchall()
            for table, name in triggers:
                cursor.execute(f"ALTER TABLE {quote(table)} DISABLE TRIGGER {quote(name)}")
            for table in _emptied_tables(connection):
                cursor.execute(f"DELETE FROM {quote(table)}")
            for table, name in triggers:
                cursor.execute(f"ALTER TABLE {quote(table)} ENABLE ALWAYS TRIGGER {quote(name)}")
        else:
            with guard_suspended(connection):
                for table in _emptied_tables(connection):
                    cursor.execute(f"DELETE FROM {quote(table)}")


def quick_flush(alias: str) -> None:
    """Empty the test database ``alias`` as ``flush`` would leave it."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        counts = _kept_rows(cursor)
    # The first flush of a process is the full one: it also counts the kept rows as migrate made them.
    if _kept_counts.get(alias) != counts:
        call_command("flush", verbosity=0, interactive=False, database=alias)
        _tables.pop(alias, None)
        with connection.cursor() as cursor:
            _kept_counts[alias] = _kept_rows(cursor)
        return
    for attempt in range(RETRIES + 1):
        try:
            _delete_all(connection)
            break
        except (IntegrityError, OperationalError):
            # A live server committed a row pointing at one just deleted, or deadlocked with us.
            if attempt == RETRIES:
                raise
            time.sleep(0.05 * (attempt + 1))
    periodic_tasks_seed()


def _fixture_teardown(self: TransactionTestCase) -> None:
    if self.available_apps is not None or self.serialized_rollback:
        return _django_fixture_teardown(self)
    for alias in self._databases_names(include_mirrors=False):  # type: ignore[attr-defined]
        quick_flush(alias)
    return None


_django_fixture_teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def install() -> None:
    """Make every transactional test (pytest-django's ``transactional_db``) end with ``quick_flush``."""
    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[attr-defined]
