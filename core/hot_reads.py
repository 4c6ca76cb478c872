"""Database reads of the hot path: on their own few threads, bounded in time, single-flight, reloaded behind."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
)

from core.breaker import database_breaker

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Reads waiting for a thread beyond this are refused rather than queued: a queue that grows
# through an outage would answer, when the database returns, requests long gone.
MAX_QUEUED = 256


class ReadsBacklogged(OperationalError):
    """Too many hot-path reads are waiting already (the database is slow or away)."""


class _Pool:
    """The read threads and what they hold: their connections, so tests can close them.

    Daemon threads, not a ``ThreadPoolExecutor``: a read stuck on a black-holed connection
    must not keep the process from exiting (the executor's threads are joined at exit).
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.queued = 0
        self.connections: set[Any] = set()
        self.local = threading.local()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self.jobs.put((future, fn, args))
        if len(self.threads) < settings.DB_READ_THREADS:
            with self.lock:
                self.threads = [thread for thread in self.threads if thread.is_alive()]
                if len(self.threads) < settings.DB_READ_THREADS:
                    thread = threading.Thread(target=self._work, name="hot-db-read", daemon=True)
                    thread.start()
                    self.threads.append(thread)
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


_pool = _Pool()


def db_read(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run ``fn(*args)`` (sync ORM code) on the hot-path read threads; the database breaker hears the outcome.

    Never on asgiref's shared thread, where one read stuck on a dead connection would hold up
    every other ``sync_to_async`` call of the process.
    """
    with _pool.lock:
        if _pool.queued >= MAX_QUEUED:
            future: Future[T] = Future()
            future.set_exception(ReadsBacklogged(f"{MAX_QUEUED} database reads already waiting"))
            return future
        _pool.queued += 1
    # In the caller's context, so the read's spans (and anything else context-bound) stay under its request.
    return _pool.submit(contextvars.copy_context().run, _run, fn, args)


async def db_read_wait(fn: Callable[..., T], *args: Any) -> T:
    """``db_read`` awaited for at most ``DB_READ_WAIT`` seconds (then ``TimeoutError``; the read goes on)."""
    future = asyncio.wrap_future(db_read(fn, *args))
    try:
        return await asyncio.wait_for(asyncio.shield(future), settings.DB_READ_WAIT)
    except TimeoutError:
        database_breaker.failure(f"no answer within {settings.DB_READ_WAIT:g} s")
        future.add_done_callback(_retrieve)
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read, so asyncio does not log it as never retrieved


def _run(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    with _pool.lock:
        _pool.queued -= 1
    connection = connections[DEFAULT_DB_ALIAS]
    _pool.connections.add(connection)
    # Drops a connection past its age or broken by an earlier error; with CONN_HEALTH_CHECKS the
    # first query below also checks a reused one and replaces it if it died meanwhile.
    close_old_connections()
    reused = connection.connection is not None
    try:
        try:
            result = _attempt(connection, fn, args)
        except (OperationalError, InterfaceError):
            if not reused:
                raise
            # It died between its health check and the query: once more, on a new connection.
            connection.close()
            result = _attempt(connection, fn, args)
    except DatabaseError as exc:
        database_breaker.failure(exc)
        connection.close()
        raise
    database_breaker.success()
    return result


def _attempt(connection: Any, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    if connection.vendor == "postgresql" and settings.DB_STATEMENT_TIMEOUT > 0:
        with connection.cursor() as cursor:
            raw = connection.connection
            if getattr(_pool.local, "bounded", None) is not raw:
                # Only these connections get the bound: migrations, exports and the admin may run longer.
                cursor.execute("SET statement_timeout = %s", [int(settings.DB_STATEMENT_TIMEOUT * 1000)])
                _pool.local.bounded = raw
    return fn(*args)


def db_read_connections_close() -> None:
    """Close the read threads' connections (tests: before the test database is dropped)."""
    for connection in list(_pool.connections):
        connection.inc_thread_sharing()
        try:
            connection.close()
        finally:
            connection.dec_thread_sharing()


class ReloadedValue(Generic[T]):
    """A value loaded from the database by ``load`` on the read threads, for a cache of the hot path.

    Fresh for ``ttl()`` seconds. After that it is served as it is while one reload runs in the
    background. A request waits (at most ``DB_READ_WAIT``) only when there is nothing right to
    serve: never loaded, invalidated by a change, or a TTL of 0 (read-through). While the
    database breaker is open nobody waits: the last value is served, or ``None`` when there
    is none. One reload at a time, whoever asks.
    """

    def __init__(self, name: str, load: Callable[[], T], ttl: Callable[[], float]) -> None:
        self.name = name
        self.load = load
        self.ttl = ttl
        self.value: T | None = None
        self.loaded_at = float("-inf")
        self.invalid = True
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._task_generation = -1  # the generation the running reload started at

    def invalidate(self) -> None:
        self.invalid = True
        self._generation += 1

    def set(self, value: T) -> None:
        self.value, self.loaded_at, self.invalid = value, time.monotonic(), False

    async def get(self) -> T | None:
        ttl = self.ttl()
        if not self.invalid and time.monotonic() - self.loaded_at < ttl:
            return self.value
        must_wait = self.invalid or self.value is None or ttl <= 0
        task = self._task
        running = task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()
        # A reload that started before the latest change may not see it: a waiter needs one after it.
        if not running or (self.invalid and self._task_generation != self._generation):
            if not database_breaker.allow():
                return self.value
            task = self._task = asyncio.ensure_future(self._reload(task if running else None))
            self._task_generation = self._generation
        # With the breaker open a stale value is served at once; only "nothing at all" waits.
        if must_wait and (self.value is None or database_breaker.closed):
            assert task is not None
            try:
                await asyncio.wait_for(asyncio.shield(task), settings.DB_READ_WAIT)
            except TimeoutError:
                database_breaker.failure(f"no answer within {settings.DB_READ_WAIT:g} s")
        return self.value

    async def _reload(self, previous: asyncio.Task[None] | None = None) -> None:
        if previous is not None:  # one reload at a time: this one follows the one still running
            await asyncio.shield(previous)
        generation = self._generation
        try:
            value = await asyncio.wrap_future(db_read(self.load))
        except DatabaseError as exc:
            logger.warning("%s could not be reloaded, serving what was cached: %s", self.name, exc)
            return
        except Exception:
            logger.exception("%s could not be reloaded", self.name)
            return
        self.value, self.loaded_at = value, time.monotonic()
        # A change that arrived during the load may not be in it: the next request reloads again.
        self.invalid = generation != self._generation
