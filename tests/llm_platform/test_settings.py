"""Settings from the environment: malformed or missing values stop start-up with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.live import ROOT


def start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, *(args or ("manage.py", "check"))],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"KEY_CACHE_TTL": "soon"}, "KEY_CACHE_TTL='soon' is not a number"),
        ({"USAGE_FLUSH_BATCH": "0"}, "USAGE_FLUSH_BATCH=0 must be at least 1"),
        ({"DATABASE_URL": "sqlite:////tmp/x.sqlite3"}, "SECRET_KEY is not set"),
        ({"FERNET_KEYS": "not-a-key"}, "FERNET_KEYS entry 1 is not a Fernet key"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE='/nonexistent/secret' cannot be read"),
        ({"USAGE_DURABILITY": "fsync"}, "USAGE_DURABILITY='fsync' must be 'batch' or 'journal'"),
        ({"USAGE_JOURNAL_TIMEOUT": "0"}, "USAGE_JOURNAL_TIMEOUT=0.0 must be at least 0.001"),
        ({"BEAT_CATCH_UP_PERIODS": "-1"}, "BEAT_CATCH_UP_PERIODS=-1 must be at least 0"),
        ({"STREAM_BACKPRESSURE": "sometimes"}, "STREAM_BACKPRESSURE='sometimes' is not a boolean"),
        ({"STREAM_BUFFER_BYTES": "100"}, "STREAM_BUFFER_BYTES=100 must be at least 1024"),
        ({"STREAM_BUFFER_BYTES": "1000000000"}, "STREAM_BUFFER_BYTES=1000000000 must be at most 67108864"),
        ({"STREAM_STALL_TIMEOUT": "0"}, "STREAM_STALL_TIMEOUT=0.0 must be at least 0.1"),
    ],
)
def test_bad_environment_fails_at_start_up_saying_what_to_set(env, message):
    result = start(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_embedded_default_needs_no_environment():
    result = start({})
    assert result.returncode == 0, result.stderr


def test_settings_create_nothing_and_the_ready_apps_make_var_dir_private(tmp_path):
    var = tmp_path / "var"
    env = {"VAR_DIR": str(var), "SECRET_KEY": "x" * 50}
    imported = start(env, "-c", "import llm_platform.settings")
    assert imported.returncode == 0, imported.stderr
    assert not var.exists()
    result = start(env)
    assert result.returncode == 0, result.stderr
    assert var.stat().st_mode & 0o777 == 0o700
    assert (var / "broker" / "out").is_dir() and (var / "broker" / "processed").is_dir()
