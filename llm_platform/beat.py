"""The beat scheduler that dispatches only while it holds the leader lease (CELERY_BEAT_SCHEDULER)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.beat import SchedulingError, _evaluate_entry_args, _evaluate_entry_kwargs
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler

from llm_platform.jobs import (
    FENCE_HEADER,
    JOB_HEADER,
    PERIOD_HEADER,
    catch_up_limit,
    last_claimed,
    period_start,
    periodic_tasks_seed,
    periods_missed,
)
from llm_platform.leader import Lease, lease_for

logger = logging.getLogger(__name__)


class LeaderScheduler(DatabaseScheduler):
    """django-celery-beat's scheduler behind a lease: standbys poll, the leader renews and dispatches.

    Each dispatched run carries its job name, period start and the leader's fencing token
    as headers; the task claims that period before its body runs (llm_platform.jobs).

    A period that ended without a run is caught up: when a leader takes over, and before
    each dispatch, the periods of interval jobs since their last claimed (or dispatched)
    period are looked up and the missed ones dispatched under their own period keys
    (bounded by ``catch_up_limit``), so the claims keep each period to one run.
    """

    lease: Lease | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token: int | None = None
        self.renewed_at = 0.0
        self.catch_up_pending = False
        # The latest period this leader has dispatched per job: a run sent but not yet
        # claimed is not a missed period.
        self.dispatched: dict[str, dt.datetime] = {}
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # Seed only: an interval edited in the admin must survive a restart.
        periodic_tasks_seed()
        self.install_default_entries(self.schedule)

    @property
    def renew_every(self) -> float:
        return settings.BEAT_LEASE_TTL / 3

    def _lease(self) -> Lease:
        if self.lease is None:
            self.lease = lease_for(self.holder)
        return self.lease

    def is_leader(self) -> bool:
        """Take or keep the lease; False (and dispatch nothing) on any doubt."""
        try:
            if self.token is None:
                close_old_connections()
                self.token = self._lease().acquire()
                if self.token is not None:
                    self.renewed_at = time.monotonic()
                    logger.warning("beat: %s is the leader now (fencing token %s)", self.holder, self.token)
                    # Re-read the schedule: the previous leader's last runs are in the database.
                    self._initial_read = True
                    self._heap = None
                    self.dispatched = {}
                    self.catch_up_pending = True
                return self.token is not None
            if time.monotonic() - self.renewed_at >= self.renew_every:
                close_old_connections()
                if not self._lease().renew(self.token):
                    logger.warning("beat: %s lost the lease (token %s); standing by", self.holder, self.token)
                    self.token = None
                    return False
                self.renewed_at = time.monotonic()
            return True
        except Exception:
            logger.exception("beat: lease check failed; not dispatching")
            self.token = None
            self.lease = None
            return False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.is_leader():
            return settings.BEAT_LEASE_POLL
        if self.catch_up_pending:
            self.catch_up_pending = False
            self.catch_up(list(self.schedule.values()))
        delay = super().tick(*args, **kwargs)
        return min(delay, max(self.renew_every - (time.monotonic() - self.renewed_at), 0.0))

    def catch_up(self, entries: list[Any], producer: Any = None) -> int:
        """Dispatch the missed periods of ``entries`` (each once, under its own period key); returns how many."""
        entries = [entry for entry in entries if _catches_up(entry)]
        if not entries:
            return 0
        try:
            close_old_connections()
            claimed = last_claimed(entry.name for entry in entries)
        except Exception:
            logger.exception("beat: could not look up the jobs' last periods; catching up later")
            self.catch_up_pending = True
            return 0
        now = timezone.now()
        sent = 0
        for entry in entries:
            known = [when for when in (claimed.get(entry.name), self.dispatched.get(entry.name)) if when is not None]
            for period in periods_missed(
                entry.schedule, last_run=max(known, default=None), now=now, limit=catch_up_limit(entry.task)
            ):
                logger.warning("beat: job %s missed its period %s; running it now", entry.name, period.isoformat())
                try:
                    self.apply_async(entry, producer, advance=False, period=period)
                except Exception:  # as for a due run: one that cannot be sent must not stop the others
                    logger.exception("beat: could not send job %s for its missed period %s", entry.name, period)
                    continue
                sent += 1
        return sent

    def period_headers(self, entry: Any, period: dt.datetime) -> dict[str, Any]:
        """The idempotency key (job, period start) and the fencing token a dispatched run carries."""
        return {JOB_HEADER: entry.name, PERIOD_HEADER: period.isoformat(), FENCE_HEADER: self.token}

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, period: dt.datetime | None = None, **kwargs: Any
    ) -> Any:
        """Send one run of ``entry``: for the current period (after any missed ones), or for ``period``."""
        if self.token is None:
            return None
        if period is None:
            self.catch_up([entry], producer)
            period = period_start(entry.schedule, timezone.now())
        if period >= self.dispatched.get(entry.name, period):
            self.dispatched[entry.name] = period
        return self.dispatch(entry, producer, advance, self.period_headers(entry, period), **kwargs)

    def dispatch(self, entry: Any, producer: Any, advance: bool, headers: dict[str, Any], **kwargs: Any) -> Any:
        entry.options.setdefault("headers", {}).update(headers)
        return DatabaseScheduler.apply_async(self, entry, producer, advance, **kwargs)

    def close(self) -> None:
        if self.token is not None:
            try:
                self._lease().release(self.token)
            except Exception:
                logger.exception("beat: could not release the lease; it lapses by itself")
            self.token = None
        super().close()


class InProcessScheduler(LeaderScheduler):
    """The same scheduler for the embedded mode: runs each job in a local thread instead of via a broker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="job")
        super().__init__(*args, **kwargs)

    def dispatch(self, entry: Any, producer: Any, advance: bool, headers: dict[str, Any], **kwargs: Any) -> Any:
        entry = self.reserve(entry) if advance else entry
        try:
            task = self.app.tasks.get(entry.task)
            if task is None:
                raise SchedulingError(f"job {entry.name}: task {entry.task} is not registered in this process")
            args, task_kwargs = _evaluate_entry_args(entry.args), _evaluate_entry_kwargs(entry.kwargs)
            return self.executor.submit(_run_local, task, args, task_kwargs, headers)
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()

    def close(self) -> None:
        super().close()
        self.executor.shutdown(wait=True)
        connections.close_all()  # this scheduler thread's own connections


def _catches_up(entry: Any) -> bool:
    """Whether a schedule entry runs again and again (not a one-off, not disabled or past its expiry)."""
    model = getattr(entry, "model", None)
    if model is None:
        return True
    if model.one_off or not model.enabled:
        return False
    return model.expires is None or model.expires > timezone.now()


def _run_local(task: Any, args: Any, kwargs: Any, headers: dict[str, Any]) -> Any:
    try:
        return task.apply(args, kwargs, headers=headers, task_id=uuid.uuid4().hex)
    finally:
        connections.close_all()  # job threads are pooled: no connection outlives its job


def embedded_scheduler_start(app: Any) -> Any:
    """Start the in-process scheduler thread of the embedded mode; call ``.stop()`` on the result to end it.

    It is the beat service with InProcessScheduler: the same schedule (django-celery-beat's
    tables), the same lease and the same per-period claims, with jobs run in local threads.
    """
    from celery.beat import EmbeddedService

    app.loader.import_default_modules()  # register every app's tasks in this process
    service = EmbeddedService(app, thread=True, scheduler_cls="llm_platform.beat:InProcessScheduler")
    service.start()
    return service
