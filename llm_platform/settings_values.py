"""Setting values built from several environment settings: the secrets, caches, broker and logging."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from llm_platform.private_files import private_dir, private_secret

SQLITE_OPTIONS = {
    # WAL lets the API read while the usage writer and the admin write.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def secret_key(configured: str, *, embedded: bool, var_dir: Path) -> str:
    """SECRET_KEY as set, or (embedded mode only) one generated once and kept in VAR_DIR."""
    if configured:
        return configured
    if not embedded:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) to a long random string; "
            "it is only generated automatically in the embedded mode (DATABASE_URL unset)."
        )
    private_dir(var_dir)  # the secret is the first thing written there
    return private_secret(var_dir / "secret_key", secrets.token_urlsafe(50))


def fernet_keys(configured: list[str], *, secret_key: str) -> list[str]:
    """FERNET_KEYS as set (each checked), or one derived from SECRET_KEY."""
    if configured:
        from cryptography.fernet import Fernet

        for index, key in enumerate(configured):
            try:
                Fernet(key)
            except ValueError:
                raise ImproperlyConfigured(
                    f"FERNET_KEYS entry {index + 1} is not a Fernet key (32 url-safe base64 bytes); make one with "
                    '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.'
                ) from None
        return configured
    # Derived from SECRET_KEY so the embedded mode needs no extra setting; production sets
    # FERNET_KEYS explicitly so SECRET_KEY can change without losing provider credentials.
    return [base64.urlsafe_b64encode(hashlib.sha256(f"fernet:{secret_key}".encode()).digest()).decode()]


def redis_cache_options(socket_timeout: float) -> dict[str, object]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": socket_timeout,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }


def broker_transport_options(broker_dir: Path) -> dict[str, object]:
    """The filesystem broker's folders (made when the app is ready: see ``broker_folders_make``)."""
    return {
        "data_folder_in": str(broker_dir / "out"),
        "data_folder_out": str(broker_dir / "out"),
        "processed_folder": str(broker_dir / "processed"),
        # kombu keeps its exchange table in ./control unless told otherwise.
        "control_folder": str(broker_dir / "control"),
        "store_processed": False,
    }


def broker_folders_make(options: dict[str, object]) -> None:
    """Create the filesystem broker's message folders; kombu writes into them without creating them."""
    for name in ("data_folder_out", "processed_folder"):
        folder = options.get(name)
        if isinstance(folder, str):
            Path(folder).mkdir(parents=True, exist_ok=True)


def logging_config(*, level: str, log_format: str, request_log: bool) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"()": "observability.logs.TextFormatter"},
            "json": {"()": "observability.logs.JsonFormatter"},
        },
        # Formatted and written on a thread of its own: a slow stderr never blocks the event loop.
        "handlers": {
            "console": {
                "()": "observability.logs.BackgroundStreamHandler",
                "formatter": "json" if log_format == "json" else "plain",
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"level": "ERROR"},
            "LiteLLM": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "llm_platform.requests": {"level": "INFO" if request_log else "WARNING"},
        },
    }
