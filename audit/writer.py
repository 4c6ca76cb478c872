"""Batched, off-the-event-loop database writes for records produced on the hot path."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from django.conf import settings
from django.db import DataError, IntegrityError, close_old_connections

# Errors that blame the rows, not the database's availability: the batch is split and only
# the refused rows are set aside. Anything else (connection lost, database down) keeps the
# whole batch for the next flush.
REFUSED_ROW_ERRORS: tuple[type[Exception], ...] = (DataError, IntegrityError, ValueError, TypeError)

logger = logging.getLogger(__name__)
Row = TypeVar("Row")


class BatchWriter(Generic[Row]):
    """Collects rows in memory and writes them in batches from one dedicated thread.

    ``add`` never blocks and never touches the database, so request handlers stay on the
    event loop. A flush runs when ``batch_size`` rows are waiting or ``interval`` seconds
    after the first waiting row, and once more at interpreter exit; a crash (SIGKILL, power
    loss) can lose at most the rows of one interval.
    """

    def __init__(self, name: str, write: Callable[[list[Row]], None], *, interval: float, batch_size: int) -> None:
        self.name = name
        self._write = write
        self.interval = interval
        self.batch_size = batch_size
        self.max_pending = max(batch_size * 200, 100_000)
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"writer-{name}")
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush_now)

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

    def flush_now(self) -> int:
        """Write every waiting row from the calling thread; returns how many were written."""
        rows = self._take()
        if not rows:
            return 0
        close_old_connections()
        written = 0
        parts = [rows]
        try:
            while parts:
                part = parts.pop(0)
                try:
                    self._write(part)
                except REFUSED_ROW_ERRORS as exc:
                    # The database answered and refused something in this batch. Halve it
                    # until the refused rows stand alone, write the rest, and set those
                    # aside where an operator can see and replay them: one bad row must not
                    # stall every record behind it.
                    if len(part) == 1:
                        self._dead_letter(part[0], exc)
                    else:
                        middle = len(part) // 2
                        parts[:0] = [part[:middle], part[middle:]]
                else:
                    written += len(part)
        except Exception:
            # Keep the rows for the next flush rather than lose accepted records.
            unwritten = [row for chunk in (part, *parts) for row in chunk]
            logger.exception("%s writer failed to write %d rows; will retry", self.name, len(unwritten))
            with self._lock:
                self._rows[:0] = unwritten
                overflow = len(self._rows) - self.max_pending
                if overflow > 0:
                    # Bound memory while the database stays down: drop the oldest, loudly.
                    del self._rows[:overflow]
                    logger.error("%s writer dropped %d rows: database unavailable too long", self.name, overflow)
        finally:
            close_old_connections()
        return written

    def _dead_letter(self, row: Row, exc: Exception) -> None:
        path = settings.VAR_DIR / "dead-letter" / f"{self.name}.jsonl"
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "writer": self.name,
            "error": f"{type(exc).__name__}: {exc}",
            "row": dataclasses.asdict(row) if dataclasses.is_dataclass(row) else row,  # type: ignore[arg-type]
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        logger.error("%s writer: the database refused a row (%s); kept in %s", self.name, record["error"], path)

    async def flush(self) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.flush_now)
