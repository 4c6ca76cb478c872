"""A cached value invalidated while a reload runs is read again after the change, never served from before it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.breaker import BREAKERS
from core.hot_reads import ReloadedValue, db_read_connections_close


@pytest.fixture(autouse=True)
def breakers_closed():
    # A database test run before may have left a read thread's connection open; these tests
    # allow no database access, not even the check of that connection a read starts with.
    db_read_connections_close()
    for breaker in BREAKERS:
        breaker.reset()
    yield
    for breaker in BREAKERS:
        breaker.reset()


async def test_a_change_during_a_reload_waits_for_a_reload_that_follows_it(settings) -> None:
    settings.DB_STATEMENT_TIMEOUT = 0  # the read threads then touch no database for a load that reads none
    state = {"version": 1}
    started, release = threading.Event(), threading.Event()
    loads: list[int] = []

    def load() -> int:
        seen = state["version"]
        loads.append(seen)
        if len(loads) == 1:  # the first load read the old state and is slow to return it
            started.set()
            release.wait(5)
        return seen

    value: ReloadedValue[int] = ReloadedValue("test value", load, lambda: 60.0)
    first = asyncio.ensure_future(value.get())
    await asyncio.to_thread(started.wait, 5)
    state["version"] = 2  # a change commits while the first load is under way ...
    value.invalidate()  # ... and its notice arrives
    second = asyncio.ensure_future(value.get())
    await asyncio.sleep(0.05)
    release.set()
    assert await first in (1, 2)
    assert await second == 2  # not the value loaded before the change
    assert loads == [1, 2]  # one reload at a time: the second followed the first
    assert await value.get() == 2  # and it is fresh now: no further load
    assert loads == [1, 2]
