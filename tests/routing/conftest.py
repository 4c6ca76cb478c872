"""Fixtures for routing: several fake upstreams that can be told to fail, route groups, a server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_platform.processes import http_wait
from routing.models import ModelDeployment, RouteGroup
from routing.services import deployment_save, route_group_save
from tests import live
from tests.routing.fake_upstreams import behave


@pytest.fixture(scope="session")
def upstreams(session_tmp: Path) -> Iterator[list[live.Server]]:
    """Three independent fake providers (A, B, C), started together."""
    servers = []
    try:
        for _ in range(3):
            port = live.free_port()
            log = session_tmp / f"fake-upstream-{port}.log"
            with log.open("wb") as out:
                process = live.spawn(
                    [sys.executable, "manage.py", "fake_upstream", "--port", str(port)], out=out, env=live.child_env()
                )
            servers.append(live.Server(f"http://127.0.0.1:{port}/v1", process, log))
        for server in servers:
            http_wait(server.url.removesuffix("/v1") + "/healthz", server.process, timeout=120)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def fakes(upstreams: list[live.Server]) -> Iterator[list[live.Server]]:
    for upstream in upstreams:
        behave(upstream)
    yield upstreams
    for upstream in upstreams:
        behave(upstream)


@pytest.fixture(scope="module")
def routing_server(django_db_setup: None, django_db_blocker: object, session_tmp: Path) -> Iterator[live.Server]:
    """A daphne process of its own per module, so routing state (cooldowns) never leaks between modules."""
    with live.daphne_server(session_tmp, ROUTING_RETRY_AFTER="0.01") as process:
        yield process


@pytest.fixture
def route_group(transactional_db: None) -> Callable[..., list[ModelDeployment]]:
    """A model group: one deployment per given upstream, plus its route group settings."""

    def make(
        name: str, servers: list[live.Server], params: list[dict[str, object]] | None = None, **policy: object
    ) -> list[ModelDeployment]:
        deployments = []
        for index, server in enumerate(servers):
            extra = (params or [{}] * len(servers))[index]
            deployments.append(
                deployment_save(
                    deployment=ModelDeployment(
                        model_name=name,
                        litellm_model=f"openai/{name}-{index}",
                        api_base=server.url,
                        extra_params=dict(extra),
                    ),
                    actor="test",
                )
            )
        route_group_save(group=RouteGroup(model_name=name, **policy), actor="test")
        return deployments

    return make
