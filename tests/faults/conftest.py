"""Servers on PostgreSQL and Redis reached through proxies the tests can black-hole, and a steady client load."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests import live


class Proxy(live.TcpProxy):
    """A TcpProxy that can also break the connections it holds while still accepting new ones."""

    def drop_connections(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def proxied(url: str, proxy: Proxy) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials and path kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}127.0.0.1:{proxy.port}"))


@dataclass
class Stores:
    database: Proxy
    redis: Proxy
    env: dict[str, str]


@pytest.fixture(scope="module")
def stores(django_db_setup: None) -> Iterator[Stores]:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("store outages need PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) to black-hole")
    db = urlsplit(live.test_database_url())
    redis = urlsplit(settings.REDIS_URL)
    database_proxy = Proxy((db.hostname or "127.0.0.1", db.port or 5432))
    redis_proxy = Proxy((redis.hostname or "127.0.0.1", redis.port or 6379))
    env = {
        "DATABASE_URL": proxied(live.test_database_url(), database_proxy),
        "REDIS_URL": proxied(settings.REDIS_URL, redis_proxy),
        # The production shape: changes reach the servers through the background poller.
        "KEY_REVOCATION_POLL": "0.2",
        "DB_CONNECT_TIMEOUT": "1",
        "STORE_RETRY_INTERVAL": "0.5",
        "REQUEST_LOG": "false",
    }
    yield Stores(database_proxy, redis_proxy, env)
    database_proxy.restore()
    redis_proxy.restore()


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
