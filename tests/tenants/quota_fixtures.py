"""Helpers for the quota tests: one of this process's quota singletons replaced for the length of a test."""

from __future__ import annotations

from typing import TypeVar

import pytest

from core.registry import Singleton

T = TypeVar("T")


def replaced(request: pytest.FixtureRequest, singleton: Singleton[T], value: T) -> T:
    """Put ``value`` in place of ``singleton``'s (e.g. ``quota.counters``) until the test ends, then what was there."""
    previous = singleton.replace(value)
    request.addfinalizer(lambda: singleton.replace(previous))
    return value
