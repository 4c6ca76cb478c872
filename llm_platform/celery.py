"""The Celery application (worker and beat); tasks are discovered in the apps."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")

# Every task claims its period first when the scheduler dispatched it (llm_platform.jobs).
app = Celery("llm_platform", task_cls="llm_platform.jobs:ClaimedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_process_init.connect(weak=False)
def _observe_worker_process(**kwargs: Any) -> None:
    # After the fork: exporter threads and instrumentation must start in each child.
    from observability import jobs, telemetry

    telemetry.setup(service="llm-platform-worker")
    jobs.connect()


@signals.worker_init.connect(weak=False)
def _observe_worker(**kwargs: Any) -> None:
    from django.conf import settings

    from observability import jobs, metrics, telemetry

    jobs.connect()  # also for the solo and threads pools, which do not fork
    telemetry.setup(service="llm-platform-worker")
    if settings.METRICS_PORT:
        metrics.serve_port(settings.METRICS_PORT)
