"""The batched writer behind usage and hot-path audit records: nothing accepted is lost."""

from __future__ import annotations

import asyncio

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
