"""The embedded mode's in-process scheduler: same schedule, same database lease, same per-period claims."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from llm_platform.beat import embedded_scheduler_start
from llm_platform.celery import app
from llm_platform.jobs import job_claim
from llm_platform.models import JobRun, SchedulerLease


@pytest.fixture
def recorded(transactional_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings) -> Path:
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv("BEAT_TEST_RUNS", str(runs))
    settings.BEAT_LEASE_BACKEND = "database"
    settings.BEAT_LEASE_TTL = 3.0
    settings.BEAT_LEASE_POLL = 0.2
    PeriodicTask.objects.all().delete()
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="record-1s",
        task="tests.llm_platform.beat_tasks.record_run",
        interval=every_second,
        last_run_at=timezone.now() - dt.timedelta(minutes=1),
    )
    return runs


def lines(runs: Path) -> list[tuple[str, ...]]:
    return [tuple(line.split()[:3]) for line in runs.read_text().splitlines()] if runs.exists() else []


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.timeout(120)
def test_in_process_schedulers_elect_one_leader_and_hand_over(recorded: Path) -> None:
    import tests.llm_platform.beat_tasks  # noqa: F401  (registers the recording task here)

    first = embedded_scheduler_start(app)
    second = None
    try:
        wait_for(lambda: len(lines(recorded)) >= 2)
        second = embedded_scheduler_start(app)
        time.sleep(2)
        assert {fence for _, _, fence in lines(recorded)} == {"1"}, "the standby dispatched while the leader held"

        first.stop()  # a clean stop releases the lease, so the standby takes over at its next poll
        wait_for(lambda: "2" in {fence for _, _, fence in lines(recorded)}, timeout=10)
        wait_for(lambda: sum(fence == "2" for _, _, fence in lines(recorded)) >= 2)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    twice = {key: n for key, n in Counter((job, period) for job, period, _ in lines(recorded)).items() if n > 1}
    assert not twice
    assert SchedulerLease.objects.get(name="beat").token == 2
    assert JobRun.objects.filter(job="record-1s", outcome="success").count() == len(lines(recorded))


def test_a_period_is_claimed_once_and_a_deposed_leader_is_refused(transactional_db: None) -> None:
    period = timezone.now().replace(microsecond=0)
    assert job_claim(job="j", period=period, fence=1, task="t", task_id="a") is not None
    assert job_claim(job="j", period=period, fence=2, task="t", task_id="b") is None
    later = period + dt.timedelta(minutes=1)
    assert job_claim(job="j", period=later, fence=3, task="t", task_id="c") is not None
    # A message from leader 2, delivered late for a period leader 3 has already moved past.
    assert job_claim(job="j", period=later - dt.timedelta(seconds=30), fence=2, task="t", task_id="d") is None
    # A redelivered message (same task id) of an unfinished run may go on.
    assert job_claim(job="j", period=later, fence=3, task="t", task_id="c") is not None


def test_seeding_keeps_an_interval_edited_in_the_admin(transactional_db: None) -> None:
    from llm_platform.jobs import periodic_tasks_seed

    periodic_tasks_seed()
    task = PeriodicTask.objects.get(name="audit-export")
    assert task.task == "audit.tasks.audit_export" and task.interval.every == 300
    task.interval = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.MINUTES)
    task.save()
    assert periodic_tasks_seed() == 0
    assert PeriodicTask.objects.get(name="audit-export").interval.every == 2
    PeriodicTask.objects.filter(name="secret-rotate").delete()
    assert periodic_tasks_seed() == 1
