"""The usage journal (USAGE_DURABILITY=journal): a request's usage row is on local disk before its last bytes go out.

The batch writer keeps rows in memory for up to one flush interval, so a process killed
with SIGKILL (or the OOM killer, or a power cut) loses the rows of requests it already
answered. Under ``journal`` the request, before sending its last bytes, awaits the append
of its row to a local file and that file's ``fdatasync``; the batch writer then writes the
row as usual, and once the row is committed (or set aside as a dead letter) its journal
entry is done. A process that starts finds the files of dead ones and writes their rows
again; the insert skips the rows already there and the rollups count only rows it added.

Files: ``VAR_DIR/usage-journal/<pid>-<ns>-<random>.jsonl``, mode 0600 in a 0700 directory,
one JSON line per row (the dead-letter form: no raw prompt, no credentials). A process holds
an exclusive ``flock`` on each file it writes or adopts, released by the kernel when it
dies (even by SIGKILL): a file nobody holds belongs to a dead process. A file is created
under a hidden name, locked, then renamed, so no other process sees it unlocked. A file is
deleted once none of its rows is waiting any more; the current one is replaced when it
reaches ``segment_bytes`` or when all its rows are done.

Appends are group-committed by one thread: the rows queued while one ``fdatasync`` runs
go out together in the next, so the event loop never waits on the disk and the cost per
row falls as load rises. A caller awaits a future, bounded by a timeout: a disk that
stalls or fails degrades the request to the batch writer's guarantee and is logged, it
never holds the response back for long.

Memory stays bounded while the database is down: a file of a dead process is read only
when its rows are tried (one file at a time, in the writer's thread), and when more than
``max_tracked`` rows wait, the oldest full files are let go (their lock released, the
files kept) and then adopted and written from disk like a dead process's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.batch_writer import BatchWriter
from core.dead_letters import record_line
from routing.journal_files import (
    SUFFIX,
    RecoveryResult,
    Segment,
    abandoned_remove,
    rows_read,
    segment_adopt,
    segment_create,
)

logger = logging.getLogger(__name__)
Row = TypeVar("Row")


@dataclass
class _Waiting(Generic[Row]):
    row: Row
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop = field(repr=False)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request stopped waiting (timeout, disconnect)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _answer(batch: list[_Waiting[Any]], error: BaseException | None) -> None:
    """Complete the futures of ``batch`` on their event loops (one call per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiting in batch:
        by_loop.setdefault(waiting.loop, []).append(waiting.future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures, error)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


class UsageJournal(Generic[Row]):
    """Durable appends for a batch writer's rows, and the replay of journals that dead processes left."""

    def __init__(
        self,
        directory: Path,
        writer: BatchWriter[Row],
        *,
        key: Callable[[Row], str],
        segment_bytes: int = 4 * 1024 * 1024,
        scan_every: float = 10.0,
        max_waiting: int = 20_000,
        max_tracked: int | None = None,
    ) -> None:
        self.directory = directory
        self.writer = writer
        self.key = key
        self.segment_bytes = segment_bytes
        self.scan_every = scan_every
        self.max_waiting = max_waiting
        # Rows appended and not yet done, tracked in memory; beyond, files are let go (see above).
        self.max_tracked = max_tracked if max_tracked is not None else 2 * writer.max_pending
        self._lock = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._waiting: list[_Waiting[Row]] = []
        self._pending: dict[str, Segment] = {}
        self._segments: dict[Path, Segment] = {}
        self._active: Segment | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last_scan: float | None = None  # the first thing the thread does is to look
        self._failures = 0  # appends that failed since the last complaint in the log
        self._complained = 0.0

    # --- the request side (event loop) ---

    def append(self, row: Row) -> asyncio.Future[None]:
        """Queue ``row``; the future is done once it is on disk (or failed, saying why). Costs microseconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._start_locked()
            if len(self._waiting) >= self.max_waiting:
                future.set_exception(OSError("usage journal: too many rows waiting for the disk"))
                return future
            self._waiting.append(_Waiting(row, future, loop))
            self._lock.notify()
        return future

    # --- the writer side (its thread) ---

    def settled(self, rows: Iterable[Row]) -> None:
        """``rows`` are committed or set aside as dead letters: their journal entries are done."""
        with self._lock:
            if not self._pending:
                return
            for row in rows:
                segment = self._pending.pop(self.key(row), None)
                if segment is None:
                    continue
                segment.outstanding -= 1
                if segment.sealed and segment.outstanding <= 0:
                    self._retire(segment)

    # --- the journal thread ---

    def start(self) -> None:
        """Start the journal thread (it first replays what dead processes left); idempotent, fork-aware."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._start_locked()

    def _start_locked(self) -> None:
        if self._pid != os.getpid():
            # A forked child inherits the parent's files and locks: they stay the parent's.
            self._reset()
        self._thread = threading.Thread(target=self._run, name="usage-journal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread, and delete the files whose rows are all done."""
        with self._lock:
            thread = self._thread
            self._stopping = True
            self._lock.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            active = self._active
            if active is not None:
                self._seal(active)
            self._thread = None
            self._stopping = False

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting and not self._stopping and self._last_scan is not None:
                    self._lock.wait(timeout=1.0)
                batch, self._waiting = self._waiting, []
                stopping = self._stopping
            # Whatever goes wrong, the thread goes on: requests wait on it.
            try:
                if batch:
                    self._write(batch)
                else:
                    self._idle()
            except Exception as exc:
                logger.exception("usage journal: appending failed")
                _answer(batch, exc)
            if self._last_scan is None or time.monotonic() - self._last_scan >= self.scan_every:
                try:
                    self._scan()
                except Exception:
                    logger.exception("usage journal: replaying the journals of dead processes failed")
            if stopping and not batch:
                return

    def _write(self, batch: list[_Waiting[Row]]) -> None:
        lines: list[bytes] = []
        written: list[_Waiting[Row]] = []
        for waiting in batch:
            try:
                lines.append(record_line(self.writer.codec.dump(waiting.row)))
            except Exception as exc:
                _answer([waiting], exc)
                continue
            written.append(waiting)
        if not written:
            return
        error: BaseException | None = None
        payload = b"".join(lines)
        try:
            segment = self._segment()
            data = memoryview(payload)
            while data:
                data = data[os.write(segment.fd, data) :]
            os.fdatasync(segment.fd)
        except OSError as exc:
            self._complain(len(written), exc)
            error = exc
            with self._lock:
                if self._active is not None:
                    self._seal(self._active)  # what it holds may be torn: start a new file
        else:
            with self._lock:
                segment.size += len(payload)
                for waiting in written:
                    self._pending[self.key(waiting.row)] = segment
                segment.outstanding += len(written)
                if len(self._pending) > self.max_tracked:
                    self._let_go()
        _answer(written, error)

    def _complain(self, rows: int, error: OSError) -> None:
        """Log a disk that fails at most once a minute, with how many rows it failed meanwhile."""
        self._failures += rows
        now = time.monotonic()
        if now - self._complained >= 60:
            logger.error(
                "usage journal: %d rows could not be made durable (%s); the batch writer still has them",
                self._failures,
                error,
            )
            self._complained, self._failures = now, 0

    def _let_go(self) -> None:
        """Stop tracking the oldest files (the database has been unavailable long): adopted again from disk."""
        if self._active is not None:
            self._seal(self._active)
        for segment in list(self._segments.values()):
            if len(self._pending) <= self.max_tracked // 2:
                break
            if segment.adopted or segment.outstanding <= 0:
                continue
            for key in [key for key, held in self._pending.items() if held is segment]:
                del self._pending[key]
            self._segments.pop(segment.path, None)
            os.close(segment.fd)  # kept on disk, its lock released: the next scan adopts it
            logger.warning(
                "usage journal: %d rows wait for the database; %s is written from disk once it is back",
                segment.outstanding,
                segment.path.name,
            )

    def _segment(self) -> Segment:
        """The file to append to: a new one when the current is full, or holds only finished rows."""
        with self._lock:
            active = self._active
            if active is not None and (active.size >= self.segment_bytes or (active.size and not active.outstanding)):
                self._seal(active)
                active = None
            if active is None:
                active = self._active = self._create()
            return active

    def _create(self) -> Segment:
        segment = segment_create(self.directory)
        self._segments[segment.path] = segment
        return segment

    def _seal(self, segment: Segment) -> None:
        segment.sealed = True
        if self._active is segment:
            self._active = None
        if segment.outstanding <= 0 and not segment.adopted:
            self._retire(segment)

    def _retire(self, segment: Segment) -> None:
        """Every row of ``segment`` is done: delete it, then let its lock go."""
        self._segments.pop(segment.path, None)
        try:
            segment.path.unlink(missing_ok=True)
        except OSError:
            logger.exception("usage journal: %s could not be deleted; its rows are replayed again", segment.path)
        try:
            os.close(segment.fd)
        except OSError:
            pass

    def _idle(self) -> None:
        with self._lock:
            active = self._active
            if active is not None and active.size and not active.outstanding:
                self._seal(active)

    # --- replay of dead processes' journals ---

    def _scan(self) -> None:
        """Adopt the files of dead processes and hand their rows to the writer's thread."""
        self._last_scan = time.monotonic()
        try:
            self._adopt()
        except OSError:
            logger.exception("usage journal: looking for journals of dead processes failed")
        with self._lock:
            waiting = [segment for segment in self._segments.values() if segment.adopted]
            for segment in waiting:
                if not segment.recovering:
                    segment.recovering = True
                    self.writer.submit(self._recover, segment).add_done_callback(self._when_recovered(segment))

    def _adopt(self) -> int:
        if not self.directory.is_dir():
            return 0
        adopted = 0
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".new"):
                abandoned_remove(path)
                continue
            if path.suffix != SUFFIX or path in self._segments:
                continue
            segment = segment_adopt(path)
            if segment is None:
                continue
            with self._lock:
                self._segments[path] = segment
            adopted += 1
            logger.warning("usage journal: %s was left by a dead process; writing its rows", path.name)
        return adopted

    def _recover(self, segment: Segment) -> RecoveryResult:
        """In the writer's thread: write an adopted file's rows; the file goes once none is left to try."""
        rows, unreadable = rows_read(segment.path, self.writer.codec.load)
        result = RecoveryResult(files=1, rows=len(rows), unreadable=unreadable)
        outcome = self.writer.write_now(rows)
        result.written = outcome.written
        result.refused = len(outcome.refused)
        result.kept = len(outcome.unwritten)
        # Rows already written are skipped by the next attempt's insert: trying the whole file again is exact.
        segment.adopted = bool(outcome.unwritten)
        return result

    def _when_recovered(self, segment: Segment) -> Callable[[ThreadFuture[RecoveryResult]], None]:
        return lambda done: self._recovered(segment, done)

    def _recovered(self, segment: Segment, done: ThreadFuture[RecoveryResult]) -> None:
        with self._lock:
            segment.recovering = False
            error = done.exception()
            if error is not None:
                logger.error("usage journal: replaying %s failed (%s); tried again later", segment.path.name, error)
                return
            result = done.result()
            if not segment.adopted:
                self._retire(segment)
                logger.warning(
                    "usage journal: replayed %s: %d rows written (those already in the database skipped), "
                    "%d refused (dead letters), %d unreadable",
                    segment.path.name,
                    result.written,
                    result.refused,
                    result.unreadable,
                )
            else:
                logger.error(
                    "usage journal: the database is unavailable; %d rows of %s kept for the next attempt",
                    result.kept,
                    segment.path.name,
                )

    def recover_now(self) -> RecoveryResult:
        """Adopt and write every dead process's journal from the calling thread (for tests and commands)."""
        total = RecoveryResult()
        self._adopt()
        with self._lock:
            adopted = [segment for segment in self._segments.values() if segment.adopted and not segment.recovering]
        for segment in adopted:
            result = self._recover(segment)
            for name in ("files", "rows", "written", "refused", "unreadable", "kept"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            if not segment.adopted:
                with self._lock:
                    self._retire(segment)
        return total

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}")) if self.directory.is_dir() else []
