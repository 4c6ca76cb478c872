"""Celery job metrics from Celery's own signals (every task, no decorator needed)."""

from __future__ import annotations

import time
from typing import Any

from celery import signals

from observability import metrics

_started: dict[str, float] = {}


def _prerun(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    started = _started.pop(task_id, None) if task_id else None
    seconds = None if started is None else time.perf_counter() - started
    name = getattr(task, "name", None) or "unknown"
    outcome = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry", "REVOKED": "revoked"}.get(
        state or "", (state or "unknown").lower()
    )
    metrics.celery_job_observe(name, outcome, seconds)


def connect() -> None:
    """Count every task's outcome and run time (idempotent)."""
    signals.task_prerun.connect(_prerun, weak=False, dispatch_uid="observability.jobs.prerun")
    signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="observability.jobs.postrun")
