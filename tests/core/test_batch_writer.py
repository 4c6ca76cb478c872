"""The batched writer behind usage and hot-path audit records: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat

from django.db import DataError, OperationalError

from core.batch_writer import BatchWriter
from core.db_refusals import database_condition
from observability import metrics


class Sink:
    """A database that is down for its first ``failures`` writes (and answers no probe meanwhile)."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.failures = failures
        self.down = False

    def __call__(self, rows: list[int]) -> None:
        self.down = self.failures > 0
        if self.down:
            self.failures -= 1
            raise OperationalError("connection refused")
        self.batches.append(list(rows))

    def reachable(self) -> bool:
        return not self.down


def writer_for(sink: Sink, **options: object) -> BatchWriter[int]:
    options = {"interval": 60, "batch_size": 1000, **options}
    return BatchWriter[int]("t", sink, reachable=sink.reachable, **options)  # type: ignore[arg-type]


async def test_rows_are_written_together_after_the_interval():
    sink = Sink()
    writer = writer_for(sink, interval=0.05)
    for row in range(10):
        writer.add(row)
    assert sink.batches == []
    await asyncio.sleep(0.3)
    assert sink.batches == [list(range(10))]


async def test_a_full_batch_is_written_without_waiting_for_the_interval():
    sink = Sink()
    writer = writer_for(sink, batch_size=5)
    for row in range(5):
        writer.add(row)
    await asyncio.sleep(0.2)
    assert sink.batches == [[0, 1, 2, 3, 4]]


def test_a_failed_write_keeps_the_rows_for_the_next_flush_in_order():
    sink = Sink(failures=1)
    writer = writer_for(sink)
    writer._rows = [1, 2]
    assert writer.flush_now() == 0
    writer._rows.append(3)
    assert writer.flush_now() == 3
    assert sink.batches == [[1, 2, 3]]


def test_pending_rows_are_bounded_while_the_database_stays_down():
    sink = Sink(failures=10)
    writer = writer_for(sink, batch_size=1)
    writer.max_pending = 3
    writer._rows = [1, 2, 3, 4, 5]
    writer.flush_now()
    assert writer._rows == [3, 4, 5]
    sink.failures = 0
    assert writer.flush_now() == 3


def test_outside_an_event_loop_rows_are_written_at_once():
    sink = Sink()
    writer = writer_for(sink)
    writer.add(7)
    assert sink.batches == [[7]]


class Refusing(Sink):
    """A database that refuses some rows (as a constraint or a bad value would) and takes the rest."""

    def __init__(self, refused: set[int]) -> None:
        super().__init__()
        self.refused = refused

    def __call__(self, rows: list[int]) -> None:
        bad = self.refused.intersection(rows)
        if bad and not self.failures:
            raise DataError(f"value out of range: {sorted(bad)}")
        super().__call__(rows)


def test_a_refused_row_is_set_aside_and_the_rest_of_its_batch_is_written(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Refusing({3, 7})
    writer = writer_for(sink)
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

        def reachable(self) -> bool:
            return not self.batches

    sink = Flaky({9})
    writer = writer_for(sink)
    writer._rows = list(range(10))
    assert writer.flush_now() == 5
    assert sink.batches == [[0, 1, 2, 3, 4]]
    assert writer._rows == [5, 6, 7, 8, 9]
    assert not (tmp_path / "dead-letter").exists()
    writer._rows.clear()  # else the exit-time flush would try this dead database again


class Blaming(Sink):
    """A database that answers but fails on some rows with whatever a driver or the write function raises."""

    def __init__(self, errors: dict[int, BaseException]) -> None:
        super().__init__()
        self.errors = errors
        self.calls = 0

    def __call__(self, rows: list[int]) -> None:
        self.calls += 1
        for row in rows:
            if row in self.errors:
                raise self.errors[row]
        self.batches.append(list(rows))


def letters(tmp_path, name: str = "t") -> list[dict]:
    path = tmp_path / "dead-letter" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dead_letter_count(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("llmp_writer_dead_letters_total", {"writer": name}) or 0.0


def test_any_failure_of_a_row_is_isolated_while_the_database_answers(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Blaming(
        {
            2: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
            5: KeyError("candidates"),
            8: OperationalError("value the driver could not send"),
        }
    )
    writer = writer_for(sink)
    writer._rows = list(range(10))
    assert writer.flush_now() == 7
    assert sorted(row for batch in sink.batches for row in batch) == [0, 1, 3, 4, 6, 7, 9]
    assert writer._rows == []
    assert [(letter["row"], letter["error"].split(":")[0]) for letter in letters(tmp_path)] == [
        (2, "UnicodeEncodeError"),
        (5, "KeyError"),
        (8, "OperationalError"),
    ]
    writer._rows = [10, 11]  # the next flush is not held back by anything
    assert writer.flush_now() == 2


def test_an_error_about_the_database_itself_keeps_the_rows_even_though_it_answers(settings, tmp_path):
    settings.VAR_DIR = tmp_path

    class Deadlock(Exception):
        sqlstate = "40P01"

    error = OperationalError("deadlock detected")
    error.__cause__ = Deadlock()
    sink = Blaming({1: error})
    writer = writer_for(sink)
    writer._rows = [0, 1, 2]
    assert writer.flush_now() == 0
    assert sink.calls == 1  # not halved: the rows are not to blame
    assert writer._rows == [0, 1, 2]
    assert letters(tmp_path) == []
    writer._rows.clear()


def test_dead_letters_are_private_and_keep_text_no_database_takes(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    before = dead_letter_count("private")
    bad = {"text": "lone \ud800 surrogate and a \x00 NUL"}

    def refuse(rows: list[dict]) -> None:
        raise DataError("refused")

    writer = BatchWriter[dict]("private", refuse, interval=60, batch_size=1000, reachable=lambda: True)
    writer._rows = [bad]
    assert writer.flush_now() == 0
    path = tmp_path / "dead-letter" / "private.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().isascii()
    assert [letter["row"] for letter in letters(tmp_path, "private")] == [bad]
    assert dead_letter_count("private") == before + 1


def test_a_dead_letter_file_left_readable_by_an_older_version_is_made_private(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    folder = tmp_path / "dead-letter"
    folder.mkdir(mode=0o755)
    (folder / "t.jsonl").write_text('{"row": 1}\n')
    (folder / "t.jsonl").chmod(0o644)
    writer = writer_for(Refusing({2}))
    writer._rows = [2]
    writer.flush_now()
    assert stat.S_IMODE((folder / "t.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [letter["row"] for letter in letters(tmp_path)] == [1, 2]


def test_the_dead_letter_file_stops_at_its_size_limit_and_counts_the_rest_as_dropped(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.DEAD_LETTER_MAX_BYTES = 400
    dropped = metrics.REGISTRY.get_sample_value(
        "llmp_writer_rows_dropped_total", {"writer": "bounded", "reason": "dead_letter_full"}
    )
    writer = BatchWriter[int]("bounded", Refusing(set(range(20))), interval=60, batch_size=1000, reachable=lambda: True)
    writer._rows = list(range(20))
    writer.flush_now()
    path = tmp_path / "dead-letter" / "bounded.jsonl"
    stored = len(path.read_text().splitlines())
    assert 0 < stored < 20 and path.stat().st_size <= 400
    after = metrics.REGISTRY.get_sample_value(
        "llmp_writer_rows_dropped_total", {"writer": "bounded", "reason": "dead_letter_full"}
    )
    assert after - (dropped or 0) == 20 - stored


def test_replay_writes_through_the_writer_and_keeps_only_what_still_fails(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Refusing({3, 7})
    writer = writer_for(sink)
    writer._rows = list(range(10))
    writer.flush_now()
    sink.refused = {7}  # the cause of 3's refusal was fixed
    result = writer.replay()
    assert (result.records, result.written, result.refused, result.kept) == (2, 1, 1, 0)
    assert [3] in sink.batches
    assert [(letter["row"], letter["attempts"]) for letter in letters(tmp_path)] == [(7, 2)]
    assert not list((tmp_path / "dead-letter").glob("*replaying*"))


def test_replay_keeps_every_dead_letter_while_the_database_is_unavailable(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Refusing({3, 7})
    writer = writer_for(sink)
    writer._rows = list(range(10))
    writer.flush_now()
    before = (tmp_path / "dead-letter" / "t.jsonl").read_bytes()
    sink.failures = 5
    result = writer.replay()
    assert (result.written, result.refused, result.kept) == (0, 0, 2)
    assert (tmp_path / "dead-letter" / "t.jsonl").read_bytes() == before


def test_rows_refused_while_a_replay_runs_are_kept_beside_the_replayed_ones(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    sink = Refusing({3})
    writer = writer_for(sink)
    writer._rows = [3]
    writer.flush_now()
    other = writer_for(Refusing({99}))  # another process's writer, same file

    class DuringReplay(Refusing):
        def __call__(self, rows: list[int]) -> None:
            other._rows = [99]
            other.flush_now()
            super().__call__(rows)

    writer._write = DuringReplay({3})
    result = writer.replay()
    assert result.refused == 1
    assert sorted(letter["row"] for letter in letters(tmp_path)) == [3, 99]


def test_errors_about_the_database_are_told_from_errors_about_rows():
    class Driver(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def wrapped(cause: BaseException) -> OperationalError:
        error = OperationalError(str(cause))
        error.__cause__ = cause
        return error

    for sqlstate in ("08006", "25006", "40001", "40P01", "53100", "55P03", "57P01", "58030", "42501", "42P01"):
        assert database_condition(wrapped(Driver(sqlstate))), sqlstate
    for message in ("database is locked", "disk I/O error", "attempt to write a readonly database", "no such table: x"):
        assert database_condition(wrapped(sqlite3.OperationalError(message))), message
    for sqlstate in ("22021", "22P05", "23505", "23514", "22001", "54000"):
        assert not database_condition(wrapped(Driver(sqlstate))), sqlstate
    assert not database_condition(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not database_condition(sqlite3.OperationalError('near "x": syntax error'))
