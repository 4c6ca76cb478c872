"""A steady client load on servers, sampled per request, with the measures the fault tests take of it."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Sample:
    at: float  # when it was sent, seconds since the load started
    seconds: float
    status: int
    body: str
    server: int = 0


@dataclass
class Load:
    """A steady stream of chat completions from a few threads, spread over servers and keys."""

    urls: list[str]
    secrets: list[str]
    model: str
    threads: int = 4
    interval: float = 0.25  # per thread: 4 threads make 16 requests a second
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.started = time.monotonic()
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=40)

    def _run(self, n: int) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        with httpx.Client(timeout=30) as client:
            i = n
            while not self._stop.is_set():
                server = i % len(self.urls)
                url, secret = self.urls[server], self.secrets[i % len(self.secrets)]
                i += 1
                sent = time.monotonic()
                try:
                    response = client.post(
                        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
                    )
                    status, text = response.status_code, response.text[:300]
                except httpx.HTTPError as exc:
                    status, text = 0, repr(exc)
                took = time.monotonic() - sent
                self.samples.append(Sample(sent - self.started, took, status, text, server))
                self._stop.wait(max(0.0, self.interval - took))

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]

    def mark(self) -> float:
        return time.monotonic() - self.started


def p99(samples: list[Sample]) -> float:
    ordered = sorted(s.seconds for s in samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def failures(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status != 200]


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds until ``check()`` held (``inf`` if it did not within ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return math.inf
        time.sleep(step)
    return time.monotonic() - started
