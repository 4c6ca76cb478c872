"""Periodic job runs: the period each run belongs to, its atomic claim, and the task base that checks it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Task
from celery.schedules import BaseSchedule, schedule
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Max
from django.utils import timezone

from llm_platform.models import JobRun

logger = logging.getLogger(__name__)

JOB_HEADER = "periodic_job"
PERIOD_HEADER = "period_start"
FENCE_HEADER = "fence"
# Set by django-celery-beat's "Run selected tasks" admin action: a run by hand.
MANUAL_HEADER = "periodic_task_name"
# A run by hand is dispatched by no leader: the lowest token, so it never fences a leader's run out.
MANUAL_FENCE = 0

# Tasks whose run covers every period before it: the export writes each event since its
# checkpoint, the rotation whatever is due, the prune whatever is past retention. Of their
# missed periods only the latest is run; other jobs catch up BEAT_CATCH_UP_PERIODS of them.
CATCH_UP_ONCE = frozenset({"audit.tasks.audit_export", "tenants.tasks.secret_rotate", "routing.tasks.usage_prune"})

# Called after every run with (job, outcome, seconds); metrics hook in here.
job_finished_hooks: list[Callable[[str, str, float], None]] = []


def period_start(run_schedule: BaseSchedule, now: dt.datetime) -> dt.datetime:
    """The start of the period ``now`` falls in: interval schedules on epoch-aligned buckets, others by minute.

    Two dispatches of one job that are a full interval apart never share a bucket, while a
    standby that re-dispatches right after a takeover lands in the bucket already claimed.
    """
    now = now.astimezone(dt.UTC)
    if isinstance(run_schedule, schedule):
        seconds = max(run_schedule.run_every.total_seconds(), 1.0)
        return dt.datetime.fromtimestamp(now.timestamp() // seconds * seconds, tz=dt.UTC)
    return now.replace(second=0, microsecond=0)  # crontab, solar and clocked fire at most once a minute


def catch_up_limit(task: str) -> int:
    """How many missed periods of a job with this task a leader runs when it finds them."""
    return min(1, settings.BEAT_CATCH_UP_PERIODS) if task in CATCH_UP_ONCE else settings.BEAT_CATCH_UP_PERIODS


def periods_missed(
    run_schedule: BaseSchedule, *, last_run: dt.datetime | None, now: dt.datetime, limit: int
) -> list[dt.datetime]:
    """The periods that ended after the one ``last_run`` falls in without a run: the latest ``limit``, oldest first.

    Only interval schedules have periods to miss: a crontab-like schedule's missed fire is
    run once by celery itself when a leader next looks at it (under the minute it runs in).
    A job that never ran has nothing to catch up.
    """
    if last_run is None or limit <= 0 or not isinstance(run_schedule, schedule):
        return []
    step = dt.timedelta(seconds=max(run_schedule.run_every.total_seconds(), 1.0))
    first = period_start(run_schedule, last_run) + step
    period = period_start(run_schedule, now) - step
    missed: list[dt.datetime] = []
    while period >= first and len(missed) < limit:
        missed.append(period)
        period -= step
    return missed[::-1]


def last_claimed(jobs: Iterable[str]) -> dict[str, dt.datetime]:
    """The latest period each of ``jobs`` has claimed (jobs that never ran are absent).

    Runs by hand are not periods: a leader still catches up what its schedule missed.
    """
    scheduled = JobRun.objects.filter(job__in=list(jobs), trigger=JobRun.Trigger.SCHEDULE)
    rows = scheduled.values("job").annotate(last=Max("period_start"))
    return {row["job"]: row["last"] for row in rows}


def job_claim(
    *,
    job: str,
    period: dt.datetime,
    fence: int,
    task: str,
    task_id: str = "",
    trigger: str = JobRun.Trigger.SCHEDULE,
) -> JobRun | None:
    """Claim one period of a job; None if it was claimed already or a newer leader has taken over."""
    newer = JobRun.objects.filter(job=job, fence__gt=fence, period_start__gte=period).exists()
    if newer:
        logger.warning("job %s period %s: dispatched by a deposed leader (token %s); skipped", job, period, fence)
        return None
    try:
        with transaction.atomic():
            return JobRun.objects.create(
                job=job,
                period_start=period,
                fence=fence,
                task=task,
                task_id=task_id,
                worker=f"{socket.gethostname()}:{os.getpid()}",
                trigger=trigger,
            )
    except IntegrityError:
        existing = JobRun.objects.filter(job=job, period_start=period).first()
        if existing is not None and task_id and existing.task_id == task_id and existing.outcome != "success":
            return existing  # the same message again (a retry or redelivery after a crash)
        logger.info("job %s period %s already claimed; skipped", job, period)
        return None


def job_finish(run: JobRun, *, outcome: str, started: float, error: str = "") -> None:
    seconds = time.monotonic() - started
    JobRun.objects.filter(pk=run.pk).update(finished_at=timezone.now(), outcome=outcome, error=error[:2000])
    for hook in job_finished_hooks:
        try:
            hook(run.job, outcome, seconds)
        except Exception:
            logger.exception("job_finished hook failed")


def request_header(request: Any, name: str) -> Any:
    """A custom message header of the running task (worker requests and local ``apply`` differ)."""
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


class ClaimedTask(Task):
    """Every task's base: a run dispatched by the scheduler first claims its period, or does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job = request_header(self.request, JOB_HEADER)
        manual = request_header(self.request, MANUAL_HEADER) if not job else None
        if not job and not manual:
            return super().__call__(*args, **kwargs)
        close_old_connections()
        if manual:
            # Run now from the admin: recorded as a run of its own, at this instant (never a
            # period's claim, so the scheduled run of the current period still happens).
            job, period, fence, trigger = manual, timezone.now(), MANUAL_FENCE, JobRun.Trigger.MANUAL
        else:
            period = dt.datetime.fromisoformat(request_header(self.request, PERIOD_HEADER))
            fence, trigger = int(request_header(self.request, FENCE_HEADER)), JobRun.Trigger.SCHEDULE
        run = job_claim(
            job=job, period=period, fence=fence, task=self.name, task_id=self.request.id or "", trigger=trigger
        )
        if run is None:
            return None
        started = time.monotonic()
        try:
            result = super().__call__(*args, **kwargs)
        except Exception as exc:
            job_finish(run, outcome=JobRun.Outcome.FAILURE, started=started, error=repr(exc))
            raise
        job_finish(run, outcome=JobRun.Outcome.SUCCESS, started=started)
        return result


def periodic_tasks_seed() -> int:
    """Create the CELERY_BEAT_SCHEDULE jobs that are not in the database yet; admin edits are kept."""
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import ModelEntry

    created = 0
    for name, fields in settings.CELERY_BEAT_SCHEDULE.items():
        if not PeriodicTask.objects.filter(name=name).exists():
            ModelEntry.from_entry(name, **fields)
            created += 1
    return created
