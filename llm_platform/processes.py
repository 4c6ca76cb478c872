"""Child processes: dying with their parent, and waiting for their HTTP endpoint (the embedded runner, the tests)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time

import httpx

# Looked up here, in the parent: the child between fork and exec only calls it.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """As ``preexec_fn``: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux; elsewhere nothing).

    A supervisor killed outright (the OOM killer, ``kill -9``) then leaves no server behind
    holding its port and database.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class NotReady(RuntimeError):
    """The endpoint did not answer in time, or its process exited first."""


def http_wait(url: str, process: subprocess.Popen[bytes] | None = None, *, timeout: float = 30.0) -> None:
    """Return once ``url`` answers any HTTP response; raise ``NotReady`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NotReady(f"{process.args!r} exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise NotReady(f"{url} did not answer within {timeout:g} s")
