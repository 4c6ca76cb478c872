"""The Celery application (worker and beat); tasks are discovered in the apps."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")

# Every task claims its period first when the scheduler dispatched it (llm_platform.jobs).
app = Celery("llm_platform", task_cls="llm_platform.jobs:ClaimedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
