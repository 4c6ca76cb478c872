"""One scheduler leader across real beat processes: kill -9 the leader, the standby takes over
within the lease time, and no periodic job runs twice for the same period."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from llm_platform.models import JobRun, SchedulerLease
from tests import live

LEASE_TTL = 5.0
LEASE_POLL = 0.5


@pytest.fixture
def jobs(transactional_db: None) -> list[str]:
    """Fast jobs so several periods pass during the test: our recording task and the real usage prune."""
    PeriodicTask.objects.all().delete()
    every_2s = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS)
    every_30s = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    every_3s = IntervalSchedule.objects.create(every=3, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="record-2s", task="tests.llm_platform.beat_tasks.record_run", interval=every_2s)
    # Last run long ago: due at once, so the leader runs it early and a takeover lands in the same period.
    PeriodicTask.objects.create(
        name="record-30s",
        task="tests.llm_platform.beat_tasks.record_run",
        interval=every_30s,
        last_run_at=timezone.now() - dt.timedelta(hours=1),
    )
    PeriodicTask.objects.create(name="usage-prune", task="routing.tasks.usage_prune", interval=every_3s)
    return ["record-2s", "record-30s", "usage-prune"]


class Processes:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env, self.started, self.logs = tmp, env, [], {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            process = live.spawn([sys.executable, "-m", "celery", "-A", "llm_platform", *args], out=out, env=self.env)
        self.started.append(process)
        self.logs[process.pid] = log
        return process

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(name, "beat", "--loglevel", "info", "--schedule", str(self.tmp / f"{name}.db"))

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path, jobs: list[str]) -> Iterator[Processes]:
    env = live.child_env(
        BEAT_LEASE_TTL=str(LEASE_TTL),
        BEAT_LEASE_POLL=str(LEASE_POLL),
        BEAT_TEST_RUNS=str(tmp_path / "runs.txt"),
        VAR_DIR=str(tmp_path / "var"),
    )
    group = Processes(tmp_path, env)
    yield group
    group.stop()
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(*client.keys(f"{settings.CACHE_KEY_PREFIX}:lease:*") or ["-"])
    if os.environ.get("SHOW_SERVER_LOGS"):
        for log in group.logs.values():
            sys.stderr.write(f"--- {log.name}\n{log.read_text()}")


def wait_until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def leader_pid(processes: Processes) -> int | None:
    """The beat whose log last announced leadership."""
    best: tuple[float, int] | None = None
    for pid, log in processes.logs.items():
        if "is the leader now" in log.read_text():
            mtime = log.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, pid)
    return best[1] if best else None


def run_lines(processes: Processes) -> list[tuple[str, str]]:
    path = Path(processes.env["BEAT_TEST_RUNS"])
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["redis", "database"])
def test_standby_takes_over_after_kill_and_no_period_runs_twice(processes: Processes, backend: str) -> None:
    if backend == "redis" and not settings.REDIS_URL:
        pytest.skip("the Redis lease needs REDIS_URL")
    processes.env["BEAT_LEASE_BACKEND"] = backend
    processes.start(
        "worker",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "4",
        "--loglevel",
        "info",
        "-I",
        "tests.llm_platform.beat_tasks",
    )
    first = processes.beat("beat-a")
    wait_until(lambda: "is the leader now" in processes.logs[first.pid].read_text(), 60, "the first beat to lead")
    second = processes.beat("beat-b")
    wait_until(lambda: len(run_lines(processes)) >= 3, 60, "the leader's first runs")
    wait_until(lambda: "beat: Starting..." in processes.logs[second.pid].read_text(), 60, "the standby to start")
    time.sleep(2)  # several polls of the standby against a live leader
    assert "is the leader now" not in processes.logs[second.pid].read_text(), "two leaders at once"

    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    killed_wall = dt.datetime.now().isoformat()
    wait_until(lambda: leader_pid(processes) == second.pid, 60, "the standby to take over")
    takeover = time.monotonic() - killed_at
    # A dead leader's lease lapses at most its TTL after its last renewal and the standby
    # notices within one poll; the rest is slack for a loaded machine.
    assert takeover <= LEASE_TTL + LEASE_POLL + 2, f"takeover took {takeover:.1f} s (killed at {killed_wall})"

    runs_at_takeover = len(run_lines(processes))
    wait_until(lambda: len(run_lines(processes)) >= runs_at_takeover + 3, 30, "the new leader's runs")
    time.sleep(2)

    lines = run_lines(processes)
    twice = {key: n for key, n in Counter(lines).items() if n > 1}
    assert not twice, f"periods run more than once: {twice}"
    assert {job for job, _ in lines} == {"record-2s", "record-30s"}
    # The real usage prune ran under the same claim, and both leaders dispatched runs.
    assert JobRun.objects.filter(job="usage-prune", outcome="success").exists()
    fences = set(JobRun.objects.values_list("fence", flat=True))
    assert len(fences) >= 2, f"expected runs from both leaders, got fences {fences}"
    if backend == "database":
        lease = SchedulerLease.objects.get(name="beat")
        assert lease.token == max(fences)
