"""Batched, off-the-event-loop database writes for records produced on the hot path."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import close_old_connections

from core import registry
from core.db_refusals import database_condition, database_reachable
from core.dead_letters import DeadLetterFile, record_line
from core.metrics import metrics

logger = logging.getLogger(__name__)
Row = TypeVar("Row")
# Batch writers flush after what produces rows for them (registry order; see core.registry).
WRITERS_ORDER = 100


@dataclass(frozen=True)
class Codec(Generic[Row]):
    """How a writer's rows are kept as dead letters: ``dump`` leaves out secrets and raw prompts, ``load`` revives."""

    dump: Callable[[Row], Any]
    load: Callable[[Any], Row]


def _plain_dump(row: Any) -> Any:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) and not isinstance(row, type) else row


PLAIN_CODEC: Codec[Any] = Codec(dump=_plain_dump, load=lambda document: document)


@dataclass
class WriteOutcome(Generic[Row]):
    """What one attempt at a list of rows came to."""

    written: int = 0
    refused: list[tuple[Row, BaseException]] = field(default_factory=list)  # the database took the rest
    unwritten: list[Row] = field(default_factory=list)  # the database was unavailable: try again later
    error: BaseException | None = None  # why ``unwritten`` is not empty


@dataclass
class ReplayResult:
    writer: str
    records: int = 0
    written: int = 0
    refused: int = 0
    kept: int = 0  # the database was unavailable, or the record could not be read back
    unreadable: int = 0
    expired: int = 0  # nothing left to write (a quota counter whose window has ended)


_UNBOUNDED = 1 << 62


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


Item = TypeVar("Item")


def _write_isolating(
    items: list[Item], write: Callable[[list[Item]], None], rows_to_blame: Callable[[BaseException], bool]
) -> WriteOutcome[Item]:
    outcome: WriteOutcome[Item] = WriteOutcome()
    parts = [items]
    close_old_connections()
    try:
        while parts:
            part = parts.pop(0)
            try:
                write(part)
            except Exception as exc:
                if not rows_to_blame(exc):
                    outcome.unwritten = [item for chunk in (part, *parts) for item in chunk]
                    outcome.error = exc
                    return outcome
                if len(part) == 1:
                    outcome.refused.append((part[0], exc))
                else:
                    middle = len(part) // 2
                    parts[:0] = [part[:middle], part[middle:]]
            else:
                outcome.written += len(part)
    finally:
        close_old_connections()
    return outcome


class BatchWriter(Generic[Row]):
    """Collects rows in memory and writes them in batches from one dedicated thread.

    ``add`` never blocks and never touches the database, so request handlers stay on the
    event loop. A flush runs when ``batch_size`` rows are waiting or ``interval`` seconds
    after the first waiting row, and once more at interpreter exit; a crash (SIGKILL, power
    loss) can lose at most the rows of one interval.

    A write that fails is the rows' fault when the database still answers (``reachable``,
    one ``SELECT 1``) and the error is not about the database itself (``database_condition``):
    the batch is halved until the refused rows stand alone, the others are written, and the
    refused ones become dead letters (``core.dead_letters``, counted in
    ``llmp_writer_dead_letters_total``). Only while the database is unavailable are rows
    kept for the next flush, at most ``max_pending`` of them.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[Row]], None],
        *,
        interval: float,
        batch_size: int,
        codec: Codec[Row] | None = None,
        reachable: Callable[[], bool] = database_reachable,
    ) -> None:
        self.name = name
        self._write = write
        self.interval = interval
        self.batch_size = batch_size
        self.max_pending = max(batch_size * 200, 100_000)
        self.codec: Codec[Row] = codec or PLAIN_CODEC
        self.dead_letters = DeadLetterFile(name)
        self._reachable = reachable
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"writer-{name}")
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush_now)
        registry.register(f"writer.{name}", flush=self.flush_now, reset=self.discard, order=WRITERS_ORDER)

    def add(self, row: Row) -> None:
        with self._lock:
            self._rows.append(row)
            waiting = len(self._rows)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        if waiting >= self.batch_size:
            self._schedule(loop, 0)
        elif self._timer is None:
            self._schedule(loop, self.interval)

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._flush_in_thread, loop)

    def _flush_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        loop.run_in_executor(self._executor, self.flush_now)

    def _take(self) -> list[Row]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def discard(self) -> int:
        """Drop every waiting row and the scheduled flush (a test's rows go with it); returns how many."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return len(self._take())

    def flush_now(self) -> int:
        """Write every waiting row from the calling thread; returns how many were written."""
        rows = self._take()
        if not rows:
            return 0
        outcome = self.write_now(rows)
        if outcome.unwritten:
            logger.error(
                "%s writer: database unavailable (%s); %d rows kept for the next flush",
                self.name,
                _error_text(outcome.error) if outcome.error else "?",
                len(outcome.unwritten),
            )
            self._keep(outcome.unwritten)
        return outcome.written

    def write_now(self, rows: list[Row]) -> WriteOutcome[Row]:
        """Write ``rows`` from the calling thread, setting refused ones aside; the unwritten ones are returned."""
        outcome = self.write_isolating(rows)
        if outcome.refused:
            self._dead_letter([(row, exc, 1) for row, exc in outcome.refused])
        return outcome

    def submit(self, work: Callable[..., Item], *args: Any) -> Future[Item]:
        """Run ``work`` in the writer's thread, after the flushes queued before it (one writer, one connection)."""
        return self._executor.submit(work, *args)

    def write_isolating(self, rows: list[Row]) -> WriteOutcome[Row]:
        """Write ``rows``, isolating the ones the database refuses; stop at the first sign it is unavailable."""
        return _write_isolating(rows, self._write, self._rows_to_blame)

    def _rows_to_blame(self, exc: BaseException) -> bool:
        if database_condition(exc):
            return False
        try:
            return self._reachable()
        except Exception:
            logger.exception("%s writer: the database probe failed", self.name)
            return False

    def _keep(self, rows: list[Row]) -> None:
        """Put rows back at the front of the queue, dropping the oldest beyond ``max_pending``."""
        with self._lock:
            self._rows[:0] = rows
            overflow = len(self._rows) - self.max_pending
            if overflow > 0:
                del self._rows[:overflow]
        if overflow > 0:
            metrics.writer_dropped_observe(self.name, "backlog", overflow)
            logger.error("%s writer dropped %d rows: database unavailable too long", self.name, overflow)

    def _dead_letter(self, refused: list[tuple[Row, BaseException, int]]) -> int:
        """Keep refused rows in the writer's dead-letter file; returns how many were stored."""
        return self._store(self._letters(refused), refused[0][1] if refused else None)

    def _letters(self, refused: list[tuple[Row, BaseException, int]]) -> list[bytes]:
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = []
        for row, exc, attempts in refused:
            record: dict[str, Any] = {"time": now, "writer": self.name, "error": _error_text(exc), "attempts": attempts}
            try:
                lines.append(record_line({**record, "row": self.codec.dump(row)}))
            except Exception as dump_error:  # the row cannot even be described: say so, keep the rest
                lines.append(record_line({**record, "row": None, "unserialisable": _error_text(dump_error)}))
        return lines

    def _store(self, lines: list[bytes], example: BaseException | None) -> int:
        try:
            stored = self.dead_letters.append(lines, max_bytes=settings.DEAD_LETTER_MAX_BYTES)
        except OSError:
            logger.exception("%s writer: the dead-letter file cannot be written; %d rows lost", self.name, len(lines))
            metrics.writer_dropped_observe(self.name, "dead_letter_unwritable", len(lines))
            return 0
        if stored:
            metrics.writer_dead_letter_observe(self.name, stored)
            logger.error(
                "%s writer: the database refused %d rows (e.g. %s); kept in %s (manage.py dead_letters)",
                self.name,
                stored,
                _error_text(example) if example else "?",
                self.dead_letters.path,
            )
        if stored < len(lines):
            metrics.writer_dropped_observe(self.name, "dead_letter_full", len(lines) - stored)
            logger.error(
                "%s writer: the dead-letter file is full (DEAD_LETTER_MAX_BYTES); %d refused rows lost",
                self.name,
                len(lines) - stored,
            )
        return stored

    def replay(self) -> ReplayResult:
        """Write the dead letters again through the same write function; what still fails stays a dead letter."""
        result = ReplayResult(self.name)
        for path in self.dead_letters.set_aside():
            self._replay_file(path, result)
            path.unlink()
        return result

    def _replay_file(self, path: Path, result: ReplayResult) -> None:
        records = list(self.dead_letters.records(path))
        result.records += len(records)
        rows: list[Row] = []
        origins: list[dict[str, Any]] = []
        kept: list[bytes] = []
        for record in records:
            try:
                rows.append(self.codec.load(record["row"]))
            except Exception:
                kept.append(record_line(record))
                continue
            origins.append(record)
        result.unreadable += len(kept)
        # Positions rather than rows go through the isolating write, so each row maps back to its record.
        outcome = _write_isolating(
            list(range(len(rows))), lambda part: self._write([rows[i] for i in part]), self._rows_to_blame
        )
        result.written += outcome.written
        result.refused += len(outcome.refused)
        # The database was unavailable, or the record could not be read back: put back as it was.
        kept += [record_line(origins[i]) for i in outcome.unwritten]
        result.kept += len(kept)
        again = [(rows[i], exc, int(origins[i].get("attempts", 1)) + 1) for i, exc in outcome.refused]
        # Accepted as dead letters once already: never dropped for size here. An error raises,
        # and the file set aside stays for the next replay.
        self.dead_letters.append([*self._letters(again), *kept], max_bytes=_UNBOUNDED)

    async def flush(self) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.flush_now)
