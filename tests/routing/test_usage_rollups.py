"""The hourly rollups count the request logs actually written: a row written twice adds to them once.

Run against the real database (SQLite by default, PostgreSQL with DATABASE_URL): each has its
own way of inserting with conflicts skipped (multi-row VALUES, COPY into a staging table),
and both must report the rows they added.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from core.batch_writer import BatchWriter
from routing.models import RequestLog
from routing.usage import UsageRow, _write_usage, usage_writer
from tests.routing.usage_books import books, usage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


class ConnectionLost(Exception):
    """What the driver reports when the server goes away: SQLSTATE class 08."""

    sqlstate = "08006"


def commit_acknowledgement_lost(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[int]:
    """The next commit reaches the database, but the writer hears ``error`` instead of the acknowledgement."""
    real_commit = connection.commit
    lost: list[int] = []

    def commit() -> None:
        real_commit()
        if not lost:
            lost.append(1)
            raise error

    monkeypatch.setattr(connection, "commit", commit)
    return lost


def writer() -> BatchWriter[UsageRow]:
    """The usage writer's write function and codec, flushed by the test thread (whose connection is patched)."""
    return BatchWriter[UsageRow]("usage", _write_usage, interval=60, batch_size=1000, codec=usage_writer.codec)


def connection_lost() -> OperationalError:
    error = OperationalError("server closed the connection unexpectedly")
    error.__cause__ = ConnectionLost()
    return error


@pytest.mark.parametrize(
    "error",
    [
        # Connection lost: the database is "unavailable", the whole batch is kept and sent again.
        pytest.param(connection_lost, id="retried-as-a-batch"),
        # An error the database does not explain while it answers: the batch is split and each
        # half written again.
        pytest.param(lambda: OperationalError("the acknowledgement was garbled"), id="retried-half-by-half"),
    ],
)
def test_a_batch_retried_after_a_lost_commit_acknowledgement_adds_its_rollups_once(owner_key, monkeypatch, error):
    rows = [usage(owner_key, status_code=200 if n % 4 else 429) for n in range(16)]
    lost = commit_acknowledgement_lost(monkeypatch, error())
    batch = writer()
    for row in rows:
        batch._rows.append(row)
    batch.flush_now()
    if batch._rows:  # kept for the next flush: the writer tries the same rows again
        assert batch.flush_now() == 16
    assert lost == [1], "the acknowledgement of the first commit was lost"
    assert not batch._rows
    assert RequestLog.objects.count() == 16
    logs, rollups = books()
    assert rollups == logs
    key = (owner_key.key.tenant_id, owner_key.key.pk, "gpt-4o-mini")
    requests, errors, prompt, completion, cost = rollups[key]
    assert (requests, errors, prompt, completion) == (16, 4, 320, 80)
    assert cost == Decimal("0.00048")  # 16 * (20 * 1e-6 + 5 * 2e-6)


def test_a_replayed_dead_letter_of_rows_already_written_adds_nothing(owner_key, outsider, key_factory):
    outsider_key = key_factory(outsider, "outsider key")
    rows = [usage(owner_key) for _ in range(5)] + [usage(outsider_key, model_requested="gpt-4o") for _ in range(3)]
    _write_usage(rows)
    before = books()
    # The same rows come back as dead letters (set aside by a writer that thought them refused).
    batch = writer()
    batch._dead_letter([(row, RuntimeError("thought refused"), 1) for row in rows])
    result = batch.replay()
    assert (result.records, result.written, result.refused, result.kept) == (8, 8, 0, 0)
    assert books() == before
    logs, rollups = before
    assert rollups == logs
    assert rollups[(outsider.pk, outsider_key.key.pk, "gpt-4o")][0] == 3


def test_one_request_twice_in_a_batch_is_logged_and_counted_once(owner_key):
    row = usage(owner_key)
    again = usage(owner_key, request_id=row.request_id, prompt_tokens=999)
    _write_usage([row, usage(owner_key), again])
    assert RequestLog.objects.count() == 2
    assert RequestLog.objects.get(request_id=row.request_id).prompt_tokens == 20  # the first one written
    logs, rollups = books()
    assert rollups == logs
    assert next(iter(rollups.values()))[:3] == (2, 0, 40)
