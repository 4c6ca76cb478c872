"""A periodic task run by hand from the admin ("Run selected tasks") is recorded like a scheduled run."""

from __future__ import annotations

import pytest
from celery import shared_task
from django.contrib.auth.models import User
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from llm_platform.jobs import MANUAL_HEADER, last_claimed
from llm_platform.models import JobRun

pytestmark = pytest.mark.django_db(transaction=True)  # the task closes old connections, as a worker does

BODIES: list[str] = []


@shared_task(name="tests.manual_runs.counted")
def counted(fail: bool = False) -> None:
    BODIES.append("ran")
    if fail:
        raise RuntimeError("the job failed")


def test_a_run_by_hand_is_recorded_with_its_outcome_and_is_no_schedules_period(monkeypatch):
    BODIES.clear()
    counted.apply(headers={MANUAL_HEADER: "nightly export"})
    counted.apply(kwargs={"fail": True}, headers={MANUAL_HEADER: "nightly export"})
    counted.apply()  # neither the scheduler nor the admin: runs, recorded nowhere

    runs = list(JobRun.objects.order_by("claimed_at", "id"))
    assert BODIES == ["ran", "ran", "ran"]
    assert [(r.job, r.trigger, r.outcome, r.fence) for r in runs] == [
        ("nightly export", "manual", "success", 0),
        ("nightly export", "manual", "failure", 0),
    ]
    assert "the job failed" in runs[1].error
    assert last_claimed(["nightly export"]) == {}  # the leader still catches up what its schedule missed


def test_the_admins_run_selected_tasks_action_sends_the_run_by_hand(client, monkeypatch):
    BODIES.clear()
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.create(name="hourly count", task="tests.manual_runs.counted", interval=every)
    sent = []
    monkeypatch.setattr(counted, "apply_async", lambda **options: sent.append(options) or counted.apply(**options))
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))

    client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "run_tasks", "_selected_action": [PeriodicTask.objects.get(name="hourly count").pk]},
    )

    assert sent and sent[0]["headers"] == {MANUAL_HEADER: "hourly count"}
    run = JobRun.objects.get(job="hourly count")
    assert (run.trigger, run.outcome) == ("manual", "success") and BODIES == ["ran"]
