"""Shared set-up for the MCP benchmarks: an SDK upstream server and one daphne gateway process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_env import bench_env, free_port  # noqa: E402

from llm_platform.processes import http_wait  # noqa: E402

KEY = "sk-bench-mcp-0123456789abcdefghijkl"
UPSTREAM_TOKEN = "bench-upstream-token"


@dataclass
class Deployment:
    upstream_url: str
    gateway_url: str
    gateway_pid: int
    env: dict[str, str]


@contextmanager
def deployment(*, database: str = "", redis: str = "", extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """Start the upstream and the gateway on a fresh database with a tenant, a key and all tools granted."""
    var, env = bench_env(
        "bench-mcp-", database=database, redis=redis, **{"SSRF_ALLOWLIST": "127.0.0.1", **(extra_env or {})}
    )
    up_port, gw_port = free_port(), free_port()
    python = sys.executable
    upstream = subprocess.Popen(
        [python, "-m", "tests.mcp_gateway.upstream_server", "--port", str(up_port), "--token", UPSTREAM_TOKEN],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes = [upstream]
    try:
        http_wait(f"http://127.0.0.1:{up_port}/", upstream)
        subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run([python, "manage.py", "flush", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        script = f"""
from tenants.models import Tenant
from tenants import services
from mcp_gateway import services as mcp
from mcp_gateway.models import ToolGrant, UpstreamServer
tenant = services.tenant_save(tenant=Tenant(slug="bench", name="Bench"), actor="bench")
services.api_key_create(tenant=tenant, name="bench", actor="bench", secret="{KEY}")
server = mcp.server_save(server=UpstreamServer(name="demo", url="http://127.0.0.1:{up_port}/mcp",
                         credential="Bearer {UPSTREAM_TOKEN}"), actor="bench")
server = mcp.server_refresh(server=server, actor="bench")
assert server.health == "healthy", server.last_error
mcp.grant_save(grant=ToolGrant(tenant=tenant, server=server), actor="bench")
"""
        subprocess.run([python, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True)
        log = (var / "gateway.log").open("wb")
        print(f"gateway log: {var / 'gateway.log'}", file=sys.stderr)
        gateway = subprocess.Popen(
            [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(gw_port), "llm_platform.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(gateway)
        http_wait(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        yield Deployment(f"http://127.0.0.1:{up_port}/mcp", f"http://127.0.0.1:{gw_port}", gateway.pid, env)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
