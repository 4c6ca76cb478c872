"""What every benchmark script starts its processes with: the repository, a free port, a fresh environment."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(
    prefix: str, *, database: str = "", redis: str = "", log_level: str = "WARNING", **extra: str
) -> tuple[Path, dict[str, str]]:
    """A fresh VAR_DIR and the environment of the processes measured in it.

    The stores are the ones named (a ``database`` the bench may empty, a ``redis``), else
    SQLite in the VAR_DIR and no Redis, whatever the calling shell has set.
    """
    var = Path(tempfile.mkdtemp(prefix=prefix))
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "LOG_LEVEL": log_level,
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("REDIS_URL", None)
    env["DATABASE_URL"] = database or f"sqlite:///{var / 'db.sqlite3'}"
    if redis:
        env["REDIS_URL"] = redis
    return var, env
