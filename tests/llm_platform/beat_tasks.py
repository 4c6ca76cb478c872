"""A task for the scheduler tests that writes down every run its body makes, outside the database."""

from __future__ import annotations

import os

from celery import shared_task

from llm_platform.jobs import FENCE_HEADER, JOB_HEADER, PERIOD_HEADER, request_header


@shared_task(bind=True)
def record_run(self: object) -> None:
    """Append "job period fence pid" to BEAT_TEST_RUNS (one line per executed body)."""
    request = self.request  # type: ignore[attr-defined]
    fields = [request_header(request, name) for name in (JOB_HEADER, PERIOD_HEADER, FENCE_HEADER)]
    line = " ".join(str(value) for value in [*fields, os.getpid()]) + "\n"
    with open(os.environ["BEAT_TEST_RUNS"], "a") as runs:
        runs.write(line)
