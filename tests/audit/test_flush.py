"""``manage.py flush`` on PostgreSQL tries again when a concurrent writer deadlocks it."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from django.core.management.commands import flush as django_flush
from django.db import OperationalError, connection

from audit.management.commands import flush


def _deadlocked() -> CommandError:
    error = CommandError("Database couldn't be flushed.")
    error.__cause__ = OperationalError("deadlock detected\nDETAIL: Process 1 waits for AccessExclusiveLock")
    return error


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite flushes by DELETE; no TRUNCATE deadlock")
@pytest.mark.django_db(transaction=True)  # the guard is lifted around each attempt
def test_flush_tries_again_after_a_deadlock_and_not_after_other_errors(monkeypatch):
    calls = []

    def handle(self, **options):
        calls.append(options)
        if len(calls) < 3:
            raise _deadlocked()

    monkeypatch.setattr(django_flush.Command, "handle", handle)
    monkeypatch.setattr(flush.time, "sleep", lambda seconds: None)
    flush.Command().handle(database="default", interactive=False)
    assert len(calls) == 3

    def broken(self, **options):
        raise CommandError("Database couldn't be flushed: permission denied")

    monkeypatch.setattr(django_flush.Command, "handle", broken)
    with pytest.raises(CommandError, match="permission denied"):
        flush.Command().handle(database="default", interactive=False)


def test_only_a_deadlock_counts():
    assert flush._is_deadlock(_deadlocked())
    assert not flush._is_deadlock(CommandError("other"))
    assert not flush._is_deadlock(OperationalError("could not connect"))
