"""Missed periods of a periodic job: which ones a leader runs when it finds them, and how many."""

from __future__ import annotations

import datetime as dt

import pytest
from celery.schedules import crontab, schedule

from llm_platform.jobs import catch_up_limit, periods_missed

T = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
MINUTE = schedule(dt.timedelta(minutes=1))


def at(minutes: float) -> dt.datetime:
    return T + dt.timedelta(minutes=minutes)


def test_the_periods_that_ended_since_the_last_run_are_missed_oldest_first():
    assert periods_missed(MINUTE, last_run=at(0.5), now=at(4.2), limit=10) == [at(1), at(2), at(3)]


def test_only_the_latest_missed_periods_up_to_the_limit_are_run():
    assert periods_missed(MINUTE, last_run=at(0.5), now=at(4.2), limit=2) == [at(2), at(3)]
    assert periods_missed(MINUTE, last_run=at(0.5), now=at(4.2), limit=0) == []
    # A job stopped for a year catches up its limit, without walking the year.
    assert periods_missed(MINUTE, last_run=at(-525_600), now=at(4.2), limit=3) == [at(1), at(2), at(3)]


@pytest.mark.parametrize(
    ("last_run", "now"),
    [
        (None, at(4.2)),  # never ran: nothing to catch up
        (at(4.0), at(4.2)),  # ran in the current period
        (at(3.9), at(4.2)),  # ran in the period just ended
    ],
)
def test_nothing_is_missed_when_every_ended_period_ran(last_run, now):
    assert periods_missed(MINUTE, last_run=last_run, now=now, limit=10) == []


def test_a_crontab_schedule_has_no_periods_to_catch_up():
    assert periods_missed(crontab(minute="*/5"), last_run=at(0), now=at(60), limit=10) == []


def test_jobs_whose_run_covers_the_periods_before_it_catch_up_once(settings):
    settings.BEAT_CATCH_UP_PERIODS = 5
    assert catch_up_limit("audit.tasks.audit_export") == 1
    assert catch_up_limit("tenants.tasks.secret_rotate") == 1
    assert catch_up_limit("routing.tasks.usage_prune") == 1
    assert catch_up_limit("reports.tasks.daily_report") == 5
    settings.BEAT_CATCH_UP_PERIODS = 0
    assert catch_up_limit("audit.tasks.audit_export") == 0
