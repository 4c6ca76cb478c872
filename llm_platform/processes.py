"""Waiting for a child process's HTTP endpoint (the embedded runner, the tests and the bench)."""

from __future__ import annotations

import subprocess
import time

import httpx


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
