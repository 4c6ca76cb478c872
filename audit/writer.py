"""Batched, off-the-event-loop database writes for records produced on the hot path."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from django.db import close_old_connections

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
        try:
            self._write(rows)
        except Exception:
            # Keep the rows for the next flush rather than lose accepted records.
            logger.exception("%s writer failed to write %d rows; will retry", self.name, len(rows))
            with self._lock:
                self._rows[:0] = rows
                overflow = len(self._rows) - self.max_pending
                if overflow > 0:
                    # Bound memory while the database stays down: drop the oldest, loudly.
                    del self._rows[:overflow]
                    logger.error("%s writer dropped %d rows: database unavailable too long", self.name, overflow)
            return 0
        finally:
            close_old_connections()
        return len(rows)

    async def flush(self) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.flush_now)
