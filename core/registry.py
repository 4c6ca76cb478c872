"""The runtime registry: every per-process singleton with one lifecycle (flush at drain, reset in tests).

A process holds state outside the database: store backends chosen on first use (in-process
or Redis), Redis clients per event loop, caches, batch writers holding rows. Each registers
here under a name, with what it means to flush it (write what it holds) and to reset it
(forget it, as a fresh process would). The drain calls :func:`aflush_all` while the event
loop still runs and :func:`flush_all` after it stops; the tests call :func:`reset_all`
between tests. Nothing else reaches into a module's private state.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Entry:
    name: str
    reset: Callable[[], object] | None = None
    flush: Callable[[], object] | None = None
    aflush: Callable[[], Awaitable[object]] | None = None
    # Lower flushes first: a producer (refusal summaries) before the writer it feeds (audit).
    order: int = 0


_entries: dict[str, Entry] = {}


def register(
    name: str,
    *,
    reset: Callable[[], object] | None = None,
    flush: Callable[[], object] | None = None,
    aflush: Callable[[], Awaitable[object]] | None = None,
    order: int = 0,
) -> None:
    """Register (or replace: a module reloaded by a test registers again) one singleton."""
    if aflush is not None and not inspect.iscoroutinefunction(aflush):
        raise TypeError(f"{name}: aflush must be a coroutine function")
    _entries[name] = Entry(name, reset, flush, aflush, order)


def entries() -> list[Entry]:
    return sorted(_entries.values(), key=lambda entry: (entry.order, entry.name))


async def aflush_all() -> dict[str, object]:
    """Flush what must be flushed on the event loop (before it stops): Redis-bound deltas and settlements.

    One failure does not stop the rest; each is logged and reported as the exception.
    """
    results: dict[str, object] = {}
    for entry in entries():
        if entry.aflush is None:
            continue
        try:
            results[entry.name] = await entry.aflush()
        except Exception as exc:
            logger.exception("flushing %s on the loop failed", entry.name)
            results[entry.name] = exc
    return results


def flush_all() -> dict[str, object]:
    """Flush what is flushed off the loop (after it stops): the batch writers' rows, in order."""
    results: dict[str, object] = {}
    for entry in entries():
        if entry.flush is None:
            continue
        try:
            results[entry.name] = entry.flush()
        except Exception as exc:
            logger.exception("flushing %s failed", entry.name)
            results[entry.name] = exc
    return results


def reset_all() -> None:
    """Forget every singleton's state, as a fresh process would (the tests call this between tests)."""
    for entry in entries():
        if entry.reset is not None:
            entry.reset()


class Singleton(Generic[T]):
    """A per-process value made on first use (e.g. the in-process or the Redis backend, by settings).

    ``counters = Singleton("quota.counters", make_counters)`` then ``counters()`` returns it.
    Tests substitute one with ``counters.replace(fake)`` (undone by :func:`reset_all`); a
    flush or aflush given here is called with the value, only when one was made.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[], T],
        *,
        flush: Callable[[T], object] | None = None,
        aflush: Callable[[T], Awaitable[object]] | None = None,
        close: Callable[[T], object] | None = None,
        order: int = 0,
    ) -> None:
        self.name = name
        self._make = make
        self._value: T | None = None
        self._close = close
        self._flush_value = flush
        self._aflush_value = aflush
        register(
            name,
            reset=self.reset,
            flush=self._flush if flush is not None else None,
            aflush=self._aflush if aflush is not None else None,
            order=order,
        )

    def __call__(self) -> T:
        value = self._value
        if value is None:
            value = self._value = self._make()
        return value

    def peek(self) -> T | None:
        """The value if one was made, without making it."""
        return self._value

    def replace(self, value: T | None) -> T | None:
        """Put ``value`` in place (None: make afresh on next use); returns what was there."""
        previous, self._value = self._value, value
        return previous

    def reset(self) -> None:
        value = self.replace(None)
        if value is not None and self._close is not None:
            try:
                self._close(value)
            except Exception:
                logger.exception("closing %s failed", self.name)

    def _flush(self) -> object:
        value = self._value
        return None if value is None or self._flush_value is None else self._flush_value(value)

    async def _aflush(self) -> Any:
        value = self._value
        return None if value is None or self._aflush_value is None else await self._aflush_value(value)
