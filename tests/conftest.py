"""Shared fixtures: the owner/member/outsider trio of tenants, keys, deployments, live servers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from audit.services import deferred_audit, denial_aggregator
from core.breaker import BREAKERS
from core.hot_reads import db_read_connections_close
from routing.ml.samples import sample_writer
from routing.models import ModelDeployment
from routing.services import deployment_save
from routing.usage import usage_writer
from tenants import services
from tenants.models import ApiKey, Tenant
from tests import live


def pytest_configure(config: pytest.Config) -> None:
    if settings.REDIS_URL:
        # A configured Redis must be there: the platform tolerates a Redis outage, so
        # without this check the suite could pass without ever testing against Redis.
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            pytest.exit(f"REDIS_URL={settings.REDIS_URL} is unreachable: {exc}", returncode=3)
        # Keep this run's cache keys apart from anything else on the same Redis.
        settings.CACHE_KEY_PREFIX = f"test{int(time.time() * 1000)}"
        settings.CACHES["default"]["KEY_PREFIX"] = settings.CACHE_KEY_PREFIX


@pytest.fixture(autouse=True)
def _batch_writers_emptied() -> Iterator[None]:
    """Rows a test left in the in-process batch writers go with it.

    Otherwise the next flush writes them into a later test's database, or, at interpreter
    exit, fails against a test database that is gone.
    """
    yield
    denial_aggregator._end_interval()  # refusals counted for a summary not yet written
    for writer in (usage_writer, deferred_audit, sample_writer):
        writer._take()
        if writer._timer is not None:
            writer._timer.cancel()
            writer._timer = None


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="session")
def upstream(session_tmp: Path) -> Iterator[live.Server]:
    with live.fake_upstream(session_tmp) as server:
        yield server


@pytest.fixture(scope="session")
def server(django_db_setup: None, django_db_blocker: object, session_tmp: Path) -> Iterator[live.Server]:
    """One daphne process on the test database, shared by the tests that need a live server."""
    with live.daphne_server(session_tmp) as process:
        yield process


@dataclass
class Issued:
    key: ApiKey
    secret: str


@pytest.fixture
def tenant_factory(transactional_db: None) -> Callable[..., Tenant]:
    def make(slug: str, **fields: object) -> Tenant:
        return services.tenant_save(tenant=Tenant(slug=slug, name=slug.title(), **fields), actor="test")

    return make


@pytest.fixture
def key_factory(transactional_db: None) -> Callable[..., Issued]:
    def make(tenant: Tenant, name: str = "key", **fields: object) -> Issued:
        key, secret = services.api_key_create(tenant=tenant, name=name, actor="test", **fields)
        return Issued(key, secret)

    return make


@pytest.fixture
def deployment_factory(transactional_db: None, upstream: live.Server) -> Callable[..., ModelDeployment]:
    def make(
        model_name: str = "gpt-4o-mini", litellm_model: str = "openai/gpt-4o-mini", **fields: object
    ) -> ModelDeployment:
        fields.setdefault("api_base", upstream.url)
        fields.setdefault("api_key", "sk-provider-secret")
        return deployment_save(
            deployment=ModelDeployment(model_name=model_name, litellm_model=litellm_model, **fields), actor="test"
        )

    return make


@pytest.fixture
def owner(tenant_factory: Callable[..., Tenant]) -> Tenant:
    return tenant_factory("owner")


@pytest.fixture
def outsider(tenant_factory: Callable[..., Tenant]) -> Tenant:
    return tenant_factory("outsider")


@pytest.fixture
def owner_key(owner: Tenant, key_factory: Callable[..., Issued]) -> Issued:
    return key_factory(owner, "owner key")


@pytest.fixture
async def stores_reset():
    """After the test: every store breaker closed, the read threads' and this thread's connections closed."""
    yield
    for breaker in BREAKERS:
        breaker.reset()
    await sync_to_async(db_read_connections_close)()
    await sync_to_async(connections.close_all)()
