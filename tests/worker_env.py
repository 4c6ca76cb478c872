"""Each pytest-xdist worker's own VAR_DIR and Redis database, set before Django reads its settings.

Loaded with ``-p tests.worker_env`` (pyproject's addopts), so it runs before pytest-django
imports the settings, which read VAR_DIR and REDIS_URL once, at import. The live server
processes a worker starts inherit the same environment. Without xdist it changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REDIS_DATABASES = 16


def redis_url_for_worker(url: str, index: int) -> str:
    """``url`` on the database ``index`` places after its own (wrapping within Redis' 16).

    Celery's broker queues and the in-process channel layer write keys without the run's
    cache key prefix, so workers sharing one database would take each other's tasks.
    """
    parts = urlsplit(url)
    path = parts.path.strip("/")
    database = (int(path) if path.isdigit() else 0) + index
    return urlunsplit(parts._replace(path=f"/{database % REDIS_DATABASES}"))


def worker_env_set(worker: str) -> None:
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    var_dir = Path(os.environ.get("VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
    os.environ["VAR_DIR"] = str(var_dir / f"xdist-{worker}")
    for name in ("REDIS_URL", "QUOTA_REDIS_URL"):
        if os.environ.get(name):
            os.environ[name] = redis_url_for_worker(os.environ[name], index)


if os.environ.get("PYTEST_XDIST_WORKER"):
    worker_env_set(os.environ["PYTEST_XDIST_WORKER"])
