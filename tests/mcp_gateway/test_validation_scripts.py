"""The validation scripts a user points at a deployment pass against a live gateway."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from mcp_gateway.models import UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(("script", "path"), [("validate_mcp_jsonrpc.py", "/mcp"), ("validate_mcp_sse.py", "/mcp/sse")])
def test_validation_script_passes_against_the_gateway(
    script: str,
    path: str,
    gateway: live.Server,
    mcp_upstream_http: live.Server,
    upstream_factory: Callable[..., UpstreamServer],
    grant: Callable[..., Any],
    owner: Tenant,
    owner_key: Issued,
) -> None:
    grant(owner, upstream_factory("demo", mcp_upstream_http.url), "echo")
    args = [sys.executable, f"scripts/{script}", f"{gateway.url}{path}", "--key", owner_key.secret]
    args += ["--tool", "demo.echo", "--arguments", '{"text": "hi"}']
    done = subprocess.run(args, cwd=live.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert "FAIL" not in done.stdout
