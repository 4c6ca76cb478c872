"""The batched writer behind usage and hot-path audit records: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json

from django.db import DataError, OperationalError

from audit.writer import BatchWriter


class Sink:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.failures = failures

    def __call__(self, rows: list[int]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database unavailable")
        self.batches.append(list(rows))


async def test_rows_are_written_together_after_the_interval():
    sink = Sink()
    writer = BatchWriter[int]("t", sink, interval=0.05, batch_size=1000)
    for row in range(10):
        writer.add(row)
    assert sink.batches == []
    await asyncio.sleep(0.3)
    assert sink.batches == [list(range(10))]


async def test_a_full_batch_is_written_without_waiting_for_the_interval():
    sink = Sink()
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=5)
    for row in range(5):
        writer.add(row)
    await asyncio.sleep(0.2)
    assert sink.batches == [[0, 1, 2, 3, 4]]


def test_a_failed_write_keeps_the_rows_for_the_next_flush_in_order():
    sink = Sink(failures=1)
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=1000)
    writer._rows = [1, 2]
    assert writer.flush_now() == 0
    writer._rows.append(3)
    assert writer.flush_now() == 3
    assert sink.batches == [[1, 2, 3]]


def test_pending_rows_are_bounded_while_the_database_stays_down():
    sink = Sink(failures=10)
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=1)
    writer.max_pending = 3
    writer._rows = [1, 2, 3, 4, 5]
    writer.flush_now()
    assert writer._rows == [3, 4, 5]
    sink.failures = 0
    assert writer.flush_now() == 3


def test_outside_an_event_loop_rows_are_written_at_once():
    sink = Sink()
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=1000)
    writer.add(7)
    assert sink.batches == [[7]]


class Refusing(Sink):
    """A database that refuses some rows (as a constraint or a bad value would) and takes the rest."""

    def __init__(self, refused: set[int]) -> None:
        super().__init__()
        self.refused = refused

    def __call__(self, rows: list[int]) -> None:
        bad = self.refused.intersection(rows)
        if bad:
            raise DataError(f"value out of range: {sorted(bad)}")
        self.batches.append(list(rows))


def test_a_refused_row_is_set_aside_and_the_rest_of_its_batch_is_written(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Refusing({3, 7})
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=1000)
    writer._rows = list(range(10))
    assert writer.flush_now() == 8
    assert sorted(row for batch in sink.batches for row in batch) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert writer._rows == []  # nothing left to retry forever
    letters = [json.loads(line) for line in (tmp_path / "dead-letter" / "t.jsonl").read_text().splitlines()]
    assert [letter["row"] for letter in letters] == [3, 7]
    assert letters[0]["error"].startswith("DataError: value out of range")


def test_the_database_going_down_while_isolating_a_refused_row_keeps_the_unwritten_rows(settings, tmp_path):
    settings.VAR_DIR = tmp_path

    class Flaky(Refusing):
        def __call__(self, rows: list[int]) -> None:
            if self.batches:  # after the first half is written, the database goes away
                raise OperationalError("connection refused")
            super().__call__(rows)

    sink = Flaky({9})
    writer = BatchWriter[int]("t", sink, interval=60, batch_size=1000)
    writer._rows = list(range(10))
    assert writer.flush_now() == 5
    assert sink.batches == [[0, 1, 2, 3, 4]]
    assert writer._rows == [5, 6, 7, 8, 9]
    assert not (tmp_path / "dead-letter").exists()
    writer._rows.clear()  # else the exit-time flush would try this dead database again
