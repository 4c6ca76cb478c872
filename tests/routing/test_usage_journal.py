"""USAGE_DURABILITY=journal: an answered request's usage row is on disk first, and survives the process."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.db.models import Sum

import routing.usage
import routing.usage_journal
from routing.models import RequestLog, UsageRollup
from routing.usage import UsageRow, UsageWriter, _write_usage, usage_record_durable, usage_writer
from routing.usage_journal import UsageJournal
from tests.routing.usage_books import books, usage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


class Journals:
    """Journals on one directory, each with its own writer, as separate processes would have."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.opened: list[UsageJournal[UsageRow]] = []

    def open(self, **options: Any) -> UsageJournal[UsageRow]:
        writer = UsageWriter("usage", _write_usage, interval=60, batch_size=10_000, codec=usage_writer.codec)
        journal = UsageJournal[UsageRow](self.directory, writer, key=lambda row: row.request_id, **options)
        writer.journal = journal
        self.opened.append(journal)
        return journal

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl"))


@pytest.fixture
def journals(tmp_path: Path) -> Iterator[Journals]:
    group = Journals(tmp_path / "usage-journal")
    yield group
    for journal in group.opened:
        if journal._thread is not None and journal._pid == os.getpid():
            journal.stop()
        # The writer's thread holds a connection of its own: the test database must be droppable.
        journal.writer.submit(connections.close_all).result()
        journal.writer._executor.shutdown()


def killed(journal: UsageJournal[UsageRow]) -> None:
    """What SIGKILL leaves: the files as they are, their locks released by the kernel, nothing cleaned up."""
    with journal._lock:
        journal._stopping = True
        journal._lock.notify()
    assert journal._thread is not None
    journal._thread.join(5)
    for segment in journal._segments.values():
        os.close(segment.fd)
    journal._segments.clear()
    journal._thread = None


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_row_is_on_disk_when_its_append_completes_and_its_file_goes_once_the_row_is_written(journals, owner_key):
    journal = journals.open()
    row = usage(owner_key)

    async def answer() -> None:
        await journal.append(row)

    asyncio.run(answer())
    (path,) = journals.files()
    assert row.request_id in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journals.directory.stat().st_mode) == 0o700
    journal.writer.add(row)  # the request's final row, as _account records it (no loop here: written at once)
    journal.stop()
    assert journals.files() == []
    assert RequestLog.objects.filter(request_id=row.request_id).exists()


async def test_rows_queued_together_share_one_fsync(journals, owner_key, monkeypatch):
    journal = journals.open()
    syncs: list[int] = []
    real_sync = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        time.sleep(0.005)  # a slower disk: the rows arriving meanwhile wait for the next sync together
        real_sync(fd)

    monkeypatch.setattr(routing.usage_journal.os, "fdatasync", counted)
    rows = [usage(owner_key) for _ in range(300)]
    await asyncio.gather(*(journal.append(row) for row in rows))
    assert len(syncs) <= 10, f"{len(syncs)} fsyncs for 300 rows"
    assert sum(len(path.read_text().splitlines()) for path in journals.files()) == 300


async def test_a_full_file_is_replaced_and_each_goes_once_all_its_rows_are_written(journals, owner_key):
    journal = journals.open(segment_bytes=2_000)
    rows = [usage(owner_key) for _ in range(30)]
    for row in rows:
        await journal.append(row)
    assert len(journals.files()) > 3
    for row in rows[:15]:
        journal.writer.add(row)
    await journal.writer.flush()
    assert 0 < len(journals.files()) < 10, "the files holding only written rows are gone"
    for row in rows[15:]:
        journal.writer.add(row)
    await journal.writer.flush()
    await asyncio.to_thread(journal.stop)
    assert journals.files() == []


def test_a_dead_process_journal_is_written_by_the_next_one_once_and_the_rollups_stay_exact(journals, owner_key):
    first = journals.open()
    rows = [usage(owner_key) for _ in range(8)]

    async def answer() -> None:
        for row in rows:
            await first.append(row)

    asyncio.run(answer())
    first.writer._rows = rows[:3]  # three final rows made it to the database before the kill
    first.writer.flush_now()
    killed(first)
    (path,) = journals.files()
    with path.open("ab") as torn:
        torn.write(b'{"request_id": "req_torn", "created_at": "20')  # the kill came mid-append
    assert RequestLog.objects.count() == 3

    second = journals.open()
    second.start()  # a starting process replays what dead ones left
    wait_for(lambda: not journals.files())
    assert RequestLog.objects.count() == 8
    logs, rollups = books()
    assert rollups == logs
    assert UsageRollup.objects.aggregate(total=Sum("requests"))["total"] == 8


def test_a_live_process_journal_is_left_to_it(journals, owner_key):
    first = journals.open()

    async def answer() -> None:
        await first.append(usage(owner_key))

    asyncio.run(answer())
    (path,) = journals.files()
    result = journals.open().recover_now()
    assert result.files == 0
    assert journals.files() == [path]
    assert not RequestLog.objects.exists()


def test_a_journal_is_kept_while_the_database_is_unavailable_and_written_once_it_is_back(
    journals, owner_key, monkeypatch
):
    first = journals.open()
    rows = [usage(owner_key) for _ in range(4)]

    async def answer() -> None:
        for row in rows:
            await first.append(row)

    asyncio.run(answer())
    killed(first)
    second = journals.open()
    monkeypatch.setattr(second.writer, "_write", down)
    result = second.recover_now()
    assert (result.files, result.kept) == (1, 4)
    assert len(journals.files()) == 1
    monkeypatch.setattr(second.writer, "_write", _write_usage)
    result = second.recover_now()
    assert result.kept == 0 and journals.files() == []
    assert RequestLog.objects.count() == 4


def down(rows: list[UsageRow]) -> None:
    from django.db import OperationalError

    class Unavailable(Exception):
        sqlstate = "57P03"  # the database is starting up

    raise OperationalError("the database system is starting up") from Unavailable()


@pytest.mark.serial  # a bound on time
async def test_a_disk_that_fails_or_stalls_degrades_the_request_instead_of_holding_it(
    journals, owner_key, monkeypatch, settings
):
    journal = journals.open()
    monkeypatch.setattr(routing.usage, "usage_journal", journal)
    settings.USAGE_JOURNAL_TIMEOUT = 0.2
    assert await usage_record_durable(usage(owner_key)) is True

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(routing.usage_journal.os, "fdatasync", broken)
    started = time.monotonic()
    assert await usage_record_durable(usage(owner_key)) is False
    assert time.monotonic() - started < 0.2

    monkeypatch.setattr(routing.usage_journal, "record_line", lambda document: 1 / 0)
    assert await usage_record_durable(usage(owner_key)) is False  # a row that cannot be encoded
    assert journal._thread is not None and journal._thread.is_alive()
    monkeypatch.undo()  # a disk that works again, but slowly
    monkeypatch.setattr(routing.usage, "usage_journal", journal)

    release = threading.Event()
    monkeypatch.setattr(routing.usage_journal.os, "fdatasync", lambda fd: release.wait(5))
    started = time.monotonic()
    assert await usage_record_durable(usage(owner_key)) is False
    waited = time.monotonic() - started
    release.set()
    assert 0.2 <= waited < 0.5, f"held the response {waited:.2f} s"


def test_rows_waiting_for_an_unavailable_database_are_tracked_in_bounded_memory_and_written_from_disk_later(
    journals, owner_key, monkeypatch
):
    journal = journals.open(segment_bytes=1_500, max_tracked=12)
    rows = [usage(owner_key) for _ in range(40)]

    async def answer() -> None:
        for row in rows:
            await journal.append(row)

    asyncio.run(answer())
    assert len(journal._pending) <= 12, "the oldest files were let go"
    monkeypatch.setattr(journal.writer, "_write", down)
    journal.writer._rows = list(rows)  # the final rows, waiting for the database
    journal.writer.flush_now()
    assert RequestLog.objects.count() == 0
    result = journal.recover_now()  # what the journal thread's next scan does
    assert result.files > 0 and result.kept == result.rows  # the database is still down: files stay
    monkeypatch.setattr(journal.writer, "_write", _write_usage)
    result = journal.recover_now()
    assert result.kept == 0
    assert RequestLog.objects.count() > len(rows) - 12  # every row of the files let go
    journal.writer.flush_now()  # the writer's own backlog, once the database is back
    journal.stop()
    assert RequestLog.objects.count() == 40
    assert journals.files() == []
    logs, rollups = books()
    assert rollups == logs
