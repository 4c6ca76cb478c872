"""Real processes for the tests: the fake upstream, and daphne or `manage.py serve` on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.db import connection

from llm_platform.processes import die_with_parent, http_wait

ROOT = Path(__file__).resolve().parent.parent


def spawn(args: list[str], *, out: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process for the tests, output to ``out``; it does not outlive a killed test run (Linux)."""
    return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)


# A server that answers in ~2 s on a quiet machine took over 30 s on a heavily loaded one;
# a slow start is not what these tests are about (a server that never starts still fails).
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """The URL of the test database pytest-django created, for child processes."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        SECRET_KEY=settings.SECRET_KEY,
        FERNET_KEYS=",".join(settings.FERNET_KEYS),
        CACHE_KEY_PREFIX=settings.CACHE_KEY_PREFIX,
        KEY_REVOCATION_POLL="0",
        USAGE_FLUSH_INTERVAL="0.05",
        PYTHONUNBUFFERED="1",
    )
    if not settings.REDIS_URL:
        # Without Redis the test process and the server share no cache, so nothing could
        # tell the server that a key or deployment changed: make it read through.
        env.update(KEY_CACHE_TTL="0", DEPLOYMENT_CACHE_TTL="0", ML_ROUTER_CACHE_TTL="0")
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def _started(
    kind: str, tmp: Path, port: int, args: list[str], env: dict[str, str], url: str, ready: str
) -> Iterator[Server]:
    """A process serving ``url``, its output in ``tmp``; ready once ``ready`` answers, stopped at the end."""
    log = tmp / f"{kind}-{port}.log"
    with log.open("wb") as out:
        process = spawn(args, out=out, env=env)
    server = Server(url, process, log)
    try:
        http_wait(ready, process, timeout=START_TIMEOUT)
        yield server
    finally:
        server.stop()
        if os.environ.get("SHOW_SERVER_LOGS"):
            sys.stderr.write(log.read_text())


@contextmanager
def fake_upstream(tmp: Path, **options: str) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "manage.py", "fake_upstream", "--port", str(port)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", value]
    base = f"http://127.0.0.1:{port}"
    with _started("fake-upstream", tmp, port, args, child_env(), f"{base}/v1", f"{base}/healthz") as server:
        yield server


@contextmanager
def daphne_server(tmp: Path, **env: str) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "llm_platform.asgi:application"]
    base = f"http://127.0.0.1:{port}"
    with _started("daphne", tmp, port, args, child_env(**env), base, f"{base}/admin/login/") as server:
        yield server


@contextmanager
def served(tmp: Path, *, port: int | None = None, **env: str) -> Iterator[Server]:
    """One ``manage.py serve`` process (the production server), stopped with SIGTERM (then killed) at the end."""
    port = port or free_port()
    args = [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with _started("serve", tmp, port, args, child_env(**env), base, f"{base}/healthz") as server:
        yield server


class TcpProxy:
    """A loopback TCP proxy the test can cut (connections refused and reset) or black-hole.

    Black-holed, it forwards nothing and answers nothing, like a network that drops packets:
    new connections are accepted by the kernel but never joined to the target, and bytes on
    open ones stay unread in the socket buffers. ``restore`` delivers them late, as TCP
    retransmission would after a short partition.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open = threading.Event()  # cleared while black-holed
        self.open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.open.wait()
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                self.open.wait()
                data = source.recv(65536)
                if not data:
                    break
                self.open.wait()  # black-holed meanwhile: hold the bytes until restored
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def blackhole(self) -> None:
        """Drop everything from now on, without refusing or resetting anything."""
        self.open.clear()

    def restore(self) -> None:
        """End a black hole: held bytes and waiting connections go through."""
        self.open.set()

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        self.open.set()
        try:
            # Closing alone does not wake the thread blocked in accept(), which would go on
            # accepting on the still-open socket; shutting it down does.
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


# The helpers above that start a process; code that calls one of them needs a live process.
PROCESS_STARTERS = frozenset({"spawn", "fake_upstream", "daphne_server", "served"})


def starts_processes(function: object, _seen: set[int] | None = None) -> bool:
    """Whether ``function`` (a test or fixture), or a function or class of the tests it calls, starts one."""
    seen = _seen if _seen is not None else set()
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    namespace = getattr(function, "__globals__", {})
    codes = [code]
    while codes:
        current = codes.pop()
        if PROCESS_STARTERS & set(current.co_names):
            return True
        codes += [const for const in current.co_consts if hasattr(const, "co_names")]
        for name in current.co_names:
            called = namespace.get(name)
            if getattr(called, "__module__", "").startswith("tests.") and called is not function:
                members = vars(called).values() if isinstance(called, type) else [called]
                if any(starts_processes(member, seen) for member in members):
                    return True
    return False
