"""A lock across pytest-xdist workers: a ``serial`` test runs while no other test does.

Timing tests (latencies, recovery times) would otherwise measure the other workers' load.
Two flock files make a reader-writer lock that a waiting serial test is not starved of:
every test passes ``turnstile`` on its way in, so once a serial test holds it no new test
starts; the serial test then takes ``running`` exclusively, which it gets when the tests
already running (holding it shared) are done.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


def _locked(stack: ExitStack, path: Path, operation: int) -> None:
    handle = stack.enter_context(path.open("a"))
    fcntl.flock(handle, operation)


@contextmanager
def turn(serial: bool) -> Iterator[None]:
    """Hold the run's lock for one test: alone if ``serial``, else beside other non-serial tests."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:  # not under xdist: one test at a time anyway
        yield
        return
    folder = Path(tempfile.gettempdir()) / f"pytest-serial-{run}"
    folder.mkdir(exist_ok=True)
    with ExitStack() as stack:
        if serial:
            _locked(stack, folder / "turnstile", fcntl.LOCK_EX)
            _locked(stack, folder / "running", fcntl.LOCK_EX)
        else:
            with ExitStack() as entry:
                _locked(entry, folder / "turnstile", fcntl.LOCK_EX)
            _locked(stack, folder / "running", fcntl.LOCK_SH)
        yield
