"""A scheduler leader killed with SIGKILL: the periods that ended while nobody led run once under the next leader."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from llm_platform.models import JobRun
from tests import live

pytestmark = pytest.mark.faults

EVERY = 2  # seconds: the period of both jobs
# The embedded scheduler (the beat service with InProcessScheduler) in a process of its own,
# so it can be killed; its jobs run in its own threads.
LEADER = """
import time

import django

django.setup()
import tests.llm_platform.beat_tasks  # noqa: F401 (registers the recording task)
from llm_platform.beat import embedded_scheduler_start
from llm_platform.celery import app

embedded_scheduler_start(app)
while True:
    time.sleep(60)
"""


class Leaders:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs.txt"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        env = live.child_env(
            DJANGO_SETTINGS_MODULE="llm_platform.settings",
            BEAT_LEASE_BACKEND="database",
            BEAT_LEASE_TTL="1.5",
            BEAT_LEASE_POLL="0.2",
            BEAT_CATCH_UP_PERIODS="100",
            BEAT_TEST_RUNS=str(self.runs),
            VAR_DIR=str(self.tmp / "var"),
        )
        with log.open("wb") as out:
            process = live.spawn([sys.executable, "-c", LEADER], out=out, env=env)
        self.processes.append(process)
        return process, log

    def lines(self) -> list[tuple[str, dt.datetime, int, int]]:
        """(job, period, fence, pid) of every run body of the recording job so far."""
        if not self.runs.exists():
            return []
        rows = []
        for line in self.runs.read_text().splitlines():
            job, period, fence, pid = line.split()
            rows.append((job, dt.datetime.fromisoformat(period), int(fence), int(pid)))
        return rows

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def leaders(transactional_db: None, tmp_path: Path) -> Iterator[Leaders]:
    PeriodicTask.objects.all().delete()
    every = IntervalSchedule.objects.create(every=EVERY, period=IntervalSchedule.SECONDS)
    due_long_ago = timezone.now() - dt.timedelta(hours=1)
    PeriodicTask.objects.create(
        name="record", task="tests.llm_platform.beat_tasks.record_run", interval=every, last_run_at=due_long_ago
    )
    PeriodicTask.objects.create(
        name="usage-prune", task="routing.tasks.usage_prune", interval=every, last_run_at=due_long_ago
    )
    group = Leaders(tmp_path)
    yield group
    group.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.mark.timeout(120)
def test_periods_that_ended_while_the_leader_was_dead_run_once_under_the_next_leader(leaders: Leaders) -> None:
    step = dt.timedelta(seconds=EVERY)
    first, _ = leaders.start("leader-a")
    wait_until(lambda: len(leaders.lines()) >= 2, 60, "the first leader's runs")
    seen = len(leaders.lines())
    # Killed right after a run, before the next one is due: no run is half done.
    wait_until(lambda: len(leaders.lines()) > seen, 10, "one more run of the first leader")
    first.send_signal(signal.SIGKILL)
    first.wait()
    last_of_a = max(period for _, period, _, _ in leaders.lines())
    # Two whole periods end with no leader at all.
    time.sleep(max(0.0, (last_of_a + 3 * step - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)

    second, second_log = leaders.start("leader-b")
    started = time.monotonic()
    wait_until(lambda: any(fence == 2 for _, _, fence, _ in leaders.lines()), 60, "the second leader's first run")
    caught_up_in = time.monotonic() - started
    wait_until(
        lambda: max(period for _, period, _, _ in leaders.lines()) >= dt.datetime.now(dt.UTC) - step,
        30,
        "the second leader to reach the current period",
    )
    later = len(leaders.lines())
    wait_until(lambda: len(leaders.lines()) >= later + 1, 10, "a normal run after the catch-up")
    second.kill()
    second.wait()

    lines = leaders.lines()
    periods = Counter(period for _, period, _, _ in lines)
    assert max(periods.values()) == 1, f"a period ran twice: {periods}"
    expected = [min(periods) + n * step for n in range(int((max(periods) - min(periods)) / step) + 1)]
    assert sorted(periods) == expected, f"periods skipped: {sorted(set(expected) - set(periods))}"
    missed = [period for _, period, fence, _ in lines if fence == 2 and last_of_a < period]
    caught_up = [period for period in missed if period + step <= last_of_a + 3 * step]
    assert len(caught_up) >= 2, f"the periods the dead leader missed ran under the next one: {missed}"
    # The second leader ran them within its start and one lease poll (a start takes ~2 s; slack for a loaded box).
    assert caught_up_in < 30

    # The prune covers everything before it: of its missed periods only the latest ran.
    prune = sorted(JobRun.objects.filter(job="usage-prune").values_list("period_start", "fence"))
    last_prune_of_a = max(period for period, fence in prune if fence == 1)
    by_b = [period for period, fence in prune if fence == 2]
    assert by_b == [by_b[0] + n * step for n in range(len(by_b))], f"prune periods of the new leader: {by_b}"
    # by_b[0] is the one caught up, by_b[1] the period the new leader took over in.
    assert len(by_b) >= 2 and (by_b[1] - last_prune_of_a) / step - 1 >= 2, "at least two prune periods were missed"
    caught_up_prune = [
        dt.datetime.fromisoformat(line.split("missed its period ")[1].split(";")[0])
        for line in second_log.read_text().splitlines()
        if "job usage-prune missed its period" in line
    ]
    assert [period for period in caught_up_prune if period < by_b[1]] == [by_b[0]], second_log.read_text()
    # (a run may be left "running" by a kill; none failed)
    assert not JobRun.objects.filter(job="usage-prune", outcome=JobRun.Outcome.FAILURE).exists()
