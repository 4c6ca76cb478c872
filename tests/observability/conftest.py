"""Live processes for the operations tests: ``manage.py serve`` (the production runner) on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm_platform.processes import http_wait
from tests import live


@contextmanager
def served(tmp: Path, *, port: int | None = None, **env: str) -> Iterator[live.Server]:
    """One ``manage.py serve`` process; stopped with SIGTERM (then killed) when the block ends."""
    port = port or live.free_port()
    log = tmp / f"serve-{port}.log"
    args = [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=live.ROOT, stdout=out, stderr=subprocess.STDOUT, env=live.child_env(**env))
    server = live.Server(f"http://127.0.0.1:{port}", process, log)
    try:
        http_wait(f"{server.url}/healthz", process)
        yield server
    finally:
        server.stop()
        if os.environ.get("SHOW_SERVER_LOGS"):
            sys.stderr.write(log.read_text())
