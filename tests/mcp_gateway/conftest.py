"""Fixtures for the MCP gateway: SDK upstream servers in real processes, a gateway, grants."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import connections

from llm_platform.processes import http_wait
from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer
from tenants.models import Tenant
from tests import live
from tests.conftest import Issued

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


@pytest.fixture(autouse=True)
def _worker_thread_connections_closed() -> Iterator[None]:
    """After a test that served requests in process, the worker thread's database connection is closed.

    Outside any async_to_sync, the ORM calls of sync_to_async(thread_sensitive=True) run in
    asgiref's one shared worker thread; its connection would keep the test database in use
    (PostgreSQL then cannot drop it at the end of the run).
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(scope="session")
def mcp_upstream_http(session_tmp: Path) -> Iterator[live.Server]:
    with mcp_upstream(session_tmp) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_upstream_streaming(session_tmp: Path) -> Iterator[live.Server]:
    """An upstream that answers with SSE, so its tools can report progress."""
    with mcp_upstream(session_tmp, sse_responses=True) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_upstream_sse(session_tmp: Path) -> Iterator[live.Server]:
    with mcp_upstream(session_tmp, "sse") as server:
        yield server


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


@pytest.fixture(scope="session")
def gateway(django_db_setup: None, django_db_blocker: object, session_tmp: Path) -> Iterator[live.Server]:
    """A daphne process serving the gateway on the test database."""
    with live.daphne_server(session_tmp, **gateway_env()) as process:
        yield process


@pytest.fixture
def allow_loopback(settings: object) -> None:
    settings.SSRF_ALLOWLIST = ["127.0.0.1"]  # type: ignore[attr-defined]


@pytest.fixture
def upstream_factory(transactional_db: None, allow_loopback: None) -> Callable[..., UpstreamServer]:
    def make(name: str, url: str, transport: str = "streamable_http", **fields: object) -> UpstreamServer:
        fields.setdefault("credential", f"Bearer {UPSTREAM_TOKEN}")
        server = services.server_save(
            server=UpstreamServer(name=name, url=url, transport=transport, **fields), actor="test"
        )
        return services.server_refresh(server=server, actor="test")

    return make


@pytest.fixture
def grant(transactional_db: None) -> Callable[..., ToolGrant]:
    def make(tenant: Tenant, server: UpstreamServer, tool: str = "*", key: Issued | None = None) -> ToolGrant:
        return services.grant_save(
            grant=ToolGrant(tenant=tenant, server=server, tool=tool, api_key=key.key if key else None), actor="test"
        )

    return make


@pytest.fixture
def streaming_demo(
    mcp_upstream_streaming: live.Server,
    upstream_factory: Callable[..., UpstreamServer],
    grant: Callable[..., Any],
    owner: Tenant,
) -> UpstreamServer:
    """The streaming upstream registered as "demo", with count_slowly and echo granted to the owner."""
    demo = upstream_factory("demo", mcp_upstream_streaming.url)
    assert demo.health == UpstreamServer.Health.HEALTHY, demo.last_error
    for tool in ("count_slowly", "echo"):
        grant(owner, demo, tool)
    return demo
