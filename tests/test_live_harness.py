"""The test harness's own processes: a killed test run does not leave servers running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import live

pytestmark = pytest.mark.live  # its processes start from a child script, out of sight of the detection

PARENT = """
import os, sys, time
from tests import live
with open(sys.argv[1], "wb") as out:
    child = live.spawn([sys.executable, "-c", "import time; time.sleep(120)"], out=out, env=dict(os.environ))
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie waiting to be reaped has stopped already


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_process_started_by_the_tests_stops_when_the_test_run_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llm_platform.settings"}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "child.log")], cwd=live.ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()  # as a killed test run: no finally blocks, no fixture teardown
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        parent.kill()
