"""Span records queued in the serving process and handed, in batches, to a child process that exports them.

The serving process only builds a tuple per finished span (``span_records``) and appends it
to a queue; a thread hands batches to the exporter child (``export_child``) over a pipe (each
record ``marshal``-ed after its length, each batch after its length), so encoding and HTTP
run outside the serving process's GIL.
"""

from __future__ import annotations

import collections
import logging
import marshal
import os
import subprocess
import sys
import threading
import time
from typing import IO

from observability.span_records import Record

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 50_000  # records waiting in the serving process; more are dropped (and counted)
EXPORT_BATCH = 2_048  # records per OTLP request
SEND_AT = 2_048  # queued records that wake the sending thread before its interval is up


def _env_ms(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, "")) / 1000)
    except ValueError:
        return default / 1000


_dumps = marshal.dumps


class ChildSink:
    """Records queued in this process and exported by a child process (see the module docstring)."""

    def __init__(self, service: str) -> None:
        self.service = service
        # Each record is queued marshalled: bytes are not tracked by the garbage collector, and
        # the span's attribute dict is freed at once instead of aging into the older generations.
        self.queue: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self._lock = threading.Lock()  # one writer to the pipe at a time
        self._wake = threading.Event()
        self._stopped = False
        self._pid = os.getpid()
        # The batch span processor's variable: how long finished spans may wait (default 5 s).
        self.interval_s = _env_ms("OTEL_BSP_SCHEDULE_DELAY", 5000)
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None
        self._start()
        # A forked child (Celery's prefork pool) gets an exporter and a sending thread of its own.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        if self._stopped or self._pipe is None:
            return
        try:
            self._pipe.close()  # the parent's pipe: the parent's exporter must still see EOF at its exit
        except OSError:
            pass
        self.queue = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = os.getpid()
        self._start()

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "observability.export_child", self.service],
            stdin=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self._pipe = self._process.stdin

    def _start(self) -> None:
        self._spawn()
        threading.Thread(target=self._run, name="span-export", daemon=True).start()

    def _respawn(self) -> None:
        """Replace a dead exporter child (the batch being written when it died is lost)."""
        with self._lock:
            if self._stopped:
                return
            old, pipe = self._process, self._pipe
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
            code = None
            if old is not None:
                try:
                    code = old.wait(1)
                except subprocess.TimeoutExpired:
                    old.kill()
                    old.wait()
            logger.warning("span exporter process is gone (exit code %s); starting a new one", code)
            self._spawn()

    def put(self, record: Record) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        data = _dumps(record)
        self.queue.append(len(data).to_bytes(4, "little") + data)
        if len(self.queue) == SEND_AT:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self._send()
            except OSError:  # the child is gone: start another one, at most once a second
                self._respawn()
                time.sleep(1.0)

    def _send(self) -> None:
        queue = self.queue
        with self._lock:
            while queue and self._pipe is not None:
                batch = []
                popleft = queue.popleft
                try:
                    for _ in range(EXPORT_BATCH):
                        batch.append(popleft())
                except IndexError:
                    pass
                data = b"".join(batch)
                self._pipe.write(len(data).to_bytes(4, "big") + data)
                self._pipe.flush()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Hand everything queued to the child (which exports it as soon as it is read)."""
        if os.getpid() == self._pid:
            self._send()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, close the pipe and wait for the child to export it and exit."""
        if os.getpid() != self._pid or self._process is None:
            return
        self._stopped = True
        try:
            self._send()
        except OSError:
            pass
        with self._lock:
            pipe, self._pipe = self._pipe, None
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("span exporter did not finish within %g s; stopped", timeout_s)
            self._process.kill()
        if self.dropped:
            logger.warning("%d spans were dropped (export queue full)", self.dropped)
