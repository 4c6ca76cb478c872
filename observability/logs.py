"""Structured logs: a JSON formatter, and the one line logged per API request.

``LOG_FORMAT=json`` (the default with ``DATABASE_URL`` set) writes one JSON object per line,
with the current trace id when tracing is on; ``text`` (the embedded default) writes the
same fields as ``name=value`` pairs for people reading a terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

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
    request_logger.info(
        "request",
        extra={
            "request_id": request_id,
            "trace_id": trace_id or telemetry.current_trace_id(),
            "endpoint": endpoint,
            "tenant": tenant,
            "key_prefix": key_prefix,
            "model": model,
            "status": status,
            "stream": stream,
            "error": error,
            "overhead_ms": overhead_ms,
            "latency_ms": latency_ms,
        },
    )
