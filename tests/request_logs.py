"""Waiting for the request logs a server writes off the request path (by batch, a moment later)."""

from __future__ import annotations

import time

from routing.models import RequestLog


def wait_for_log(**filters: object) -> RequestLog:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = RequestLog.objects.filter(**filters).first()
        if log is not None:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no request log matching {filters}")


def wait_for_logs(count: int, **filters: object) -> list[RequestLog]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        logs = list(RequestLog.objects.filter(**filters).order_by("created_at"))
        if len(logs) >= count:
            return logs
        time.sleep(0.05)
    raise AssertionError(f"expected {count} request logs matching {filters}")
