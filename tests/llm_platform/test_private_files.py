"""What the platform writes under VAR_DIR (database, sessions, secrets, logs, broker, dead letters, exports)
is readable by the service's user alone, whatever umask it was started with."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llm_platform.processes import die_with_parent, http_wait
from tests import live


def loose_umask() -> None:
    """A child started the way a service manager might start it: files 0644, directories 0755 by default."""
    os.umask(0o022)


def embedded_env(var: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FERNET_KEYS", "CACHE_KEY_PREFIX")
    }
    return {**env, "VAR_DIR": str(var), "PYTHONUNBUFFERED": "1", "AUDIT_EXPORT_INTERVAL": "1"}


def manage(var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=live.ROOT,
        env=embedded_env(var),
        preexec_fn=loose_umask,
        capture_output=True,
        text=True,
        timeout=300,
    )


def readable_by_others(var: Path) -> list[str]:
    offenders = []
    for path in [var, *var.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            offenders.append(f"{path.relative_to(var.parent)} {oct(mode)}")
    return offenders


@pytest.mark.live  # run_embedded: a server and the fake upstream
def test_the_embedded_platform_keeps_every_file_it_writes_to_its_own_user(tmp_path):
    var = tmp_path / "var"
    port, upstream_port = live.free_port(), live.free_port()
    log = tmp_path / "embedded.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_embedded", "--port", str(port), "--upstream-port", str(upstream_port)],
            cwd=live.ROOT,
            env=embedded_env(var),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: (loose_umask(), die_with_parent()),
        )
    try:
        http_wait(f"http://127.0.0.1:{port}/admin/login/", process, timeout=live.START_TIMEOUT)
        key = (var / "demo_api_key").read_text().strip()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        login = httpx.get(f"http://127.0.0.1:{port}/admin/login/", timeout=30)
        assert login.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # The other writers, each in a process of its own started with the same loose umask.
    assert manage(var, "audit_export").returncode == 0
    dead_letter = (
        "from audit.services import AuditEntry, deferred_audit; "
        "deferred_audit._dead_letter([(AuditEntry(actor='test', action='probe'), ValueError('refused'), 1)])"
    )
    assert manage(var, "shell", "-c", dead_letter).returncode == 0

    written = {path.relative_to(var).as_posix() for path in var.rglob("*")}
    expected = {"db.sqlite3", "secret_key", "admin_password", "demo_api_key", "logs", "broker", "dead-letter"}
    assert expected <= {name.split("/")[0] for name in written}, sorted(written)
    assert any(name.startswith("audit-export/") for name in written), sorted(written)
    assert readable_by_others(var) == [], log.read_text()[-3000:]


def test_an_existing_world_readable_var_dir_and_database_are_tightened(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    database = var / "db.sqlite3"
    database.write_text("")
    database.chmod(0o644)
    result = manage(var, "check")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE((var / "secret_key").stat().st_mode) == 0o600


def test_static_files_stay_readable_by_a_proxy_that_serves_them(tmp_path):
    static = tmp_path / "static"
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=live.ROOT,
        env={**embedded_env(tmp_path / "var"), "STATIC_ROOT": str(static)},
        preexec_fn=loose_umask,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    css = static / "admin" / "css" / "base.css"
    assert stat.S_IMODE(css.stat().st_mode) == 0o644
    assert stat.S_IMODE(css.parent.stat().st_mode) == 0o755
