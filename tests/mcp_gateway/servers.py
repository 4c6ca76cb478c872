"""The MCP servers of the tests: SDK upstreams in processes, the stdio command, the gateway's environment, a world."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from llm_platform.processes import http_wait
from mcp_gateway.models import ToolGrant, UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued

UPSTREAM_TOKEN = "upstream-secret-token-123"
# The operator's stdio commands for the tests: the SDK server in stdio_server.py.
STDIO_COMMANDS = {"local": [sys.executable, str(Path(__file__).with_name("stdio_server.py"))]}


@contextmanager
def mcp_upstream(
    tmp: Path, transport: str = "streamable-http", token: str = UPSTREAM_TOKEN, *, sse_responses: bool = False
) -> Iterator[live.Server]:
    port = live.free_port()
    log = tmp / f"mcp-upstream-{port}.log"
    args = [sys.executable, "-m", "tests.mcp_gateway.upstream_server", "--port", str(port), "--transport", transport]
    if token:
        args += ["--token", token]
    if sse_responses:
        args.append("--sse-responses")
    with log.open("wb") as out:
        process = live.spawn(args, out=out, env=live.child_env())
    path = "/sse" if transport == "sse" else "/mcp"
    server = live.Server(f"http://127.0.0.1:{port}{path}", process, log)
    try:
        # Any HTTP answer (401 without the token) means it is listening.
        http_wait(f"http://127.0.0.1:{port}/health-probe", process)
        yield server
    finally:
        server.stop()


def gateway_env() -> dict[str, str]:
    env = {
        "SSRF_ALLOWLIST": "127.0.0.1",
        "MCP_SSE_HEARTBEAT": "0.5",
        "MCP_STDIO_COMMANDS": json.dumps(STDIO_COMMANDS),
        "MCP_STDIO_MEMORY_MB": "768",
    }
    if not settings.REDIS_URL:
        env["MCP_CATALOG_TTL"] = "0"  # no shared cache to tell the server the catalog changed
    return env


@dataclass
class DemoWorld:
    """The live gateway, the SDK upstream registered on it as "demo", and the owner tenant with its key."""

    gateway: live.Server
    demo: UpstreamServer
    owner: Tenant
    key: Issued
    grant_to: Callable[..., ToolGrant]

    def grant(self, *tools: str) -> None:
        """Grant the owner ``tools`` of the demo upstream (none named: all of them)."""
        for tool in tools or ("*",):
            self.grant_to(self.owner, self.demo, tool)
