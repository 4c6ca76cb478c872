"""Structured logs: a JSON formatter, and the one line logged per API request.

``LOG_FORMAT=json`` (the default with ``DATABASE_URL`` set) writes one JSON object per line,
with the current trace id when tracing is on; ``text`` (the embedded default) writes the
same fields as ``name=value`` pairs for people reading a terminal.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
from typing import Any, TextIO

from observability import telemetry

REQUEST_LOGGER = "llm_platform.requests"
request_logger = logging.getLogger(REQUEST_LOGGER)

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ``extra`` fields, trace id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                data[name] = value
        if "trace_id" not in data:
            trace_id = telemetry.current_trace_id()
            if trace_id:
                data["trace_id"] = trace_id
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The plain format, with ``extra`` fields appended as ``name=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [
            f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in _STANDARD and not name.startswith("_") and value not in (None, "")
        ]
        return f"{text} {' '.join(extra)}" if extra else text


class BackgroundStreamHandler(logging.handlers.QueueHandler):
    """A stream handler whose formatting and writing happen on a thread of their own.

    A log call on the event loop only queues the record: a slow or blocked stderr (a full
    pipe, a stalled log shipper) can no longer stall every request of the process. The queue
    is bounded; when it is full, records are dropped and counted, and the count is written
    as soon as the stream takes lines again. Records still queued are written at exit, and a
    forked child (a Celery worker) gets its own writer thread.
    """

    def __init__(self, stream: TextIO | None = None, *, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._dropped_lock = threading.Lock()
        self.target = logging.StreamHandler(stream if stream is not None else sys.stderr)
        self.listener: logging.handlers.QueueListener | None = None
        super().__init__(queue.Queue(maxsize=capacity))
        self._start()
        atexit.register(self.stop)
        os.register_at_fork(after_in_child=self._restart_in_child)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        # The formatter belongs to the writing side; this side only queues.
        self.target.setFormatter(fmt)

    def _start(self) -> None:
        self.listener = logging.handlers.QueueListener(self.queue, _Writer(self))
        self.listener.start()

    def _restart_in_child(self) -> None:
        # The parent's writer thread does not exist in a forked child: start the child's own.
        self.queue = queue.Queue(maxsize=self.capacity)
        self.dropped = 0
        self._dropped_lock = threading.Lock()
        self._start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Only fix the message now (its arguments may change later); formatting, the costly
        # part, is left to the writer thread.
        record.msg = record.getMessage()
        record.args = None
        return record

    def _running(self) -> bool:
        return self.listener is not None and self.listener._thread is not None

    def enqueue(self, record: logging.LogRecord) -> None:
        if not self._running():  # after stop (late at exit): write it here and now
            self.target.handle(record)
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._dropped_lock:
                self.dropped += 1

    def flush(self) -> None:
        """Wait until every queued record has been written (tests, the drain)."""
        if self._running() and isinstance(self.queue, queue.Queue):
            self.queue.join()
        self.target.flush()

    def stop(self) -> None:
        """Write what is queued, then end the writer thread (at exit, or when replaced)."""
        atexit.unregister(self.stop)
        if self._running():
            self.listener.stop()  # type: ignore[union-attr]
        try:
            self.target.flush()
        except (OSError, ValueError):  # the stream is already closed: nothing left to flush
            pass

    def close(self) -> None:
        self.stop()
        super().close()


class _Writer(logging.Handler):
    """The writing side of ``BackgroundStreamHandler``, run by its listener thread."""

    def __init__(self, owner: BackgroundStreamHandler) -> None:
        super().__init__()
        self.owner = owner

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        owner = self.owner
        if owner.dropped:
            with owner._dropped_lock:
                dropped, owner.dropped = owner.dropped, 0
            owner.target.handle(
                logging.makeLogRecord(
                    {
                        "name": __name__,
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{dropped} log records were dropped: the log stream did not keep up",
                    }
                )
            )
        owner.target.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def request_log(
    *,
    request_id: str,
    endpoint: str,
    tenant: str | None,
    key_prefix: str | None,
    model: str | None,
    status: int,
    overhead_ms: float,
    latency_ms: float,
    stream: bool = False,
    error: str = "",
    trace_id: str = "",
) -> None:
    """Log the one line for a finished API request (at INFO on ``llm_platform.requests``)."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    # Built directly rather than through ``logger.info(extra=...)``: this line is written for
    # every request, and the caller lookup logging would do costs more than the rest.
    record = logging.LogRecord(REQUEST_LOGGER, logging.INFO, __file__, 0, "request", None, None)
    record.__dict__.update(
        request_id=request_id,
        trace_id=trace_id or telemetry.current_trace_id(),
        endpoint=endpoint,
        tenant=tenant,
        key_prefix=key_prefix,
        model=model,
        status=status,
        stream=stream,
        error=error,
        overhead_ms=overhead_ms,
        latency_ms=latency_ms,
    )
    request_logger.handle(record)
