"""``manage.py run_embedded`` killed outright (SIGKILL, as the OOM killer does) leaves no server behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from llm_platform.processes import die_with_parent, http_wait
from tests import live
from tests.llm_platform.test_private_files import embedded_env


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.live  # run_embedded: a server and the fake upstream
@pytest.mark.skipif(sys.platform != "linux", reason="children die with their parent through Linux's prctl")
def test_the_server_and_the_upstream_stop_when_the_supervisor_is_killed(tmp_path):
    port, upstream_port = live.free_port(), live.free_port()
    web, upstream = f"http://127.0.0.1:{port}/admin/login/", f"http://127.0.0.1:{upstream_port}/healthz"
    with (tmp_path / "embedded.log").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_embedded", "--port", str(port), "--upstream-port", str(upstream_port)],
            cwd=live.ROOT,
            env=embedded_env(tmp_path / "var"),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        http_wait(web, process, timeout=live.START_TIMEOUT)
        assert answers(upstream)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (answers(web) or answers(upstream)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(web) and not answers(upstream), "a child of the killed supervisor is still serving"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
