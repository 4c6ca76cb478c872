"""The runtime registry: singletons made on first use, flushed in order, reset for the next test."""

from __future__ import annotations

import asyncio

import pytest

from core import registry


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> dict[str, registry.Entry]:
    """A registry of the test's own, so the process's real entries are untouched."""
    entries: dict[str, registry.Entry] = {}
    monkeypatch.setattr(registry, "_entries", entries)
    return entries


def test_singleton_is_made_once_and_made_again_after_reset(scratch: dict) -> None:
    made: list[object] = []

    def make() -> object:
        made.append(object())
        return made[-1]

    single = registry.Singleton("thing", make)
    assert single.peek() is None
    assert single() is single() is made[0]
    registry.reset_all()
    assert single.peek() is None
    assert single() is made[1]


def test_replace_substitutes_until_reset(scratch: dict) -> None:
    single = registry.Singleton("thing", lambda: "real")
    assert single.replace("fake") is None
    assert single() == "fake"
    registry.reset_all()
    assert single() == "real"


def test_reset_closes_what_was_made(scratch: dict) -> None:
    closed: list[str] = []
    single = registry.Singleton("thing", lambda: "value", close=closed.append)
    registry.reset_all()
    assert closed == []  # nothing made, nothing to close
    single()
    registry.reset_all()
    assert closed == ["value"]


def test_flush_runs_in_order_and_one_failure_does_not_stop_the_rest(scratch: dict) -> None:
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("store gone")

    registry.register("writer", flush=lambda: ran.append("writer") or 3, order=10)
    registry.register("summaries", flush=lambda: ran.append("summaries"), order=0)
    registry.register("broken", flush=broken, order=5)
    results = registry.flush_all()
    assert ran == ["summaries", "broken", "writer"]
    assert isinstance(results["broken"], RuntimeError)
    assert results["writer"] == 3


def test_singleton_flushes_only_a_made_value(scratch: dict) -> None:
    flushed: list[str] = []

    async def deltas(value: str) -> int:
        flushed.append(value)
        return 1

    single = registry.Singleton("state", lambda: "state", aflush=deltas)
    assert asyncio.run(registry.aflush_all()) == {"state": None}
    assert flushed == []
    single()
    assert asyncio.run(registry.aflush_all()) == {"state": 1}
    assert flushed == ["state"]


def test_aflush_must_be_a_coroutine_function(scratch: dict) -> None:
    with pytest.raises(TypeError):
        registry.register("wrong", aflush=lambda: None)  # type: ignore[arg-type]


def test_batch_writers_and_refusal_summaries_are_registered_summaries_first() -> None:
    from audit.services import deferred_audit, denial_aggregator  # noqa: F401 - registers them

    names = [entry.name for entry in registry.entries() if entry.flush is not None]
    assert names.index("audit.denials") < names.index(f"writer.{deferred_audit.name}")
