"""Fixtures for the MCP gateway: SDK upstream servers in real processes, a gateway, grants."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from mcp_gateway import services
from mcp_gateway.models import ToolGrant, UpstreamServer, UpstreamTool, VirtualServer
from tenants.models import Tenant
from tests import live
from tests.keys import Issued
from tests.mcp_gateway.servers import UPSTREAM_TOKEN, DemoWorld, gateway_env, mcp_upstream


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
def demo(mcp_upstream_http: live.Server, upstream_factory: Callable[..., UpstreamServer]) -> UpstreamServer:
    """The SDK upstream registered as "demo", its tools discovered; nothing granted yet."""
    server = upstream_factory("demo", mcp_upstream_http.url)
    assert server.health == UpstreamServer.Health.HEALTHY, server.last_error
    return server


@pytest.fixture
def demo_world(
    gateway: live.Server, demo: UpstreamServer, grant: Callable[..., ToolGrant], owner: Tenant, owner_key: Issued
) -> DemoWorld:
    return DemoWorld(gateway, demo, owner, owner_key, grant)


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


def cached_server(name: str, tools: list[str]) -> UpstreamServer:
    """An upstream as discovery would have cached it (no call reaches it in these tests)."""
    server = services.server_save(server=UpstreamServer(name=name, url=f"http://127.0.0.1:9/{name}/mcp"), actor="test")
    UpstreamServer.objects.filter(pk=server.pk).update(
        prompts=[{"name": "brief", "description": f"{name}'s prompt"}],
        resources=[{"uri": f"memo://{name}/notes", "name": "notes"}],
    )
    for tool in tools:
        UpstreamTool.objects.create(server=server, name=tool)
    return server


@pytest.fixture
def catalog(allow_loopback: None, owner: Tenant, outsider: Tenant, owner_key: Issued) -> dict[str, Any]:
    mine = cached_server("mine", ["echo", "add"])
    theirs = cached_server("theirs", ["drop_tables"])
    services.grant_save(grant=ToolGrant(tenant=owner, server=mine, tool="echo"), actor="test")
    services.grant_save(grant=ToolGrant(tenant=outsider, server=theirs), actor="test")
    services.virtual_server_save(
        bundle=VirtualServer(name="safe"), tools=list(UpstreamTool.objects.filter(name="echo")), actor="test"
    )
    return {"mine": mine, "theirs": theirs}
