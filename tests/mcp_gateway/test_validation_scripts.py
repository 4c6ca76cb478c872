"""The validation scripts a user points at a deployment pass against a live gateway."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import live
from tests.mcp_gateway.servers import DemoWorld

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(("script", "path"), [("validate_mcp_jsonrpc.py", "/mcp"), ("validate_mcp_sse.py", "/mcp/sse")])
def test_validation_script_passes_against_the_gateway(script: str, path: str, demo_world: DemoWorld) -> None:
    demo_world.grant("echo")
    gateway, owner_key = demo_world.gateway, demo_world.key
    args = [sys.executable, f"scripts/{script}", f"{gateway.url}{path}", "--key", owner_key.secret]
    args += ["--tool", "demo.echo", "--arguments", '{"text": "hi"}']
    done = subprocess.run(args, cwd=live.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert "FAIL" not in done.stdout
