"""Scheduler state shared by every beat process: the leader lease and the claimed job periods."""

from __future__ import annotations

from django.db import models


class SchedulerLease(models.Model):
    """The database lease of the scheduler leader (used when no Redis is configured).

    ``token`` is the fencing token: it grows by one at every change of leader, so work
    dispatched by a deposed leader can be told apart from its successor's.
    """

    name = models.CharField(max_length=100, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    token = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'} (token {self.token})"


class JobRun(models.Model):
    """One run of a periodic job for one period; the unique row is the run's idempotency key."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Run now (admin)"

    job = models.CharField(max_length=200, help_text="The periodic task's name.")
    period_start = models.DateTimeField()
    task = models.CharField(max_length=200)
    task_id = models.CharField(max_length=255, blank=True)
    fence = models.BigIntegerField(help_text="The leader's fencing token that dispatched the run.")
    worker = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.RUNNING)
    error = models.TextField(blank=True)
    trigger = models.CharField(
        max_length=10,
        choices=Trigger.choices,
        default=Trigger.SCHEDULE,
        help_text="Dispatched by the scheduler's leader, or run by hand from the periodic tasks' admin.",
    )

    class Meta:
        ordering = ["-period_start"]
        constraints = [models.UniqueConstraint(fields=["job", "period_start"], name="jobrun_unique_job_period")]
        indexes = [models.Index(fields=["job", "fence"], name="jobrun_job_fence_idx")]

    def __str__(self) -> str:
        return f"{self.job} @ {self.period_start.isoformat()}"
