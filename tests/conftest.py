"""Shared fixtures (tenants, keys, deployments, live servers) and the ``live`` and ``serial`` marks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.test import override_settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import registry
from core.breaker import BREAKERS
from core.hot_reads import db_read_connections_close
from observability import telemetry
from routing.models import ModelDeployment
from routing.services import deployment_save
from tenants import services
from tenants.models import Tenant
from tests import live, quick_flush, serial_lock
from tests.keys import Issued


def pytest_configure(config: pytest.Config) -> None:
    quick_flush.install()
    if settings.REDIS_URL:
        # A configured Redis must be there: the platform tolerates a Redis outage, so
        # without this check the suite could pass without ever testing against Redis.
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            pytest.exit(f"REDIS_URL={settings.REDIS_URL} is unreachable: {exc}", returncode=3)
        # Keep this run's cache keys apart from anything else on the same Redis.
        settings.CACHE_KEY_PREFIX = f"test{int(time.time() * 1000)}{os.environ.get('PYTEST_XDIST_WORKER', '')}"
        settings.CACHES["default"]["KEY_PREFIX"] = settings.CACHE_KEY_PREFIX


@pytest.fixture(autouse=True)
def _process_state_reset() -> Iterator[None]:
    """After each test, every per-process singleton is as a fresh process has it (``core.registry``).

    Rows a test left in the batch writers go with it (otherwise the next flush writes them
    into a later test's database, or fails at exit against one that is gone), and so do the
    store backends, caches, breakers and Redis clients it made or substituted.
    """
    yield
    registry.reset_all()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``live`` what starts a process (itself or through a fixture); ``faults`` tests are ``serial``.

    ``-m "not live"`` is then the fast loop. Serial tests share one xdist worker (with
    ``--dist loadgroup``) and run while no other test does (``serial_lock``).
    """
    verdicts: dict[int, bool] = {}

    def starts(function: object) -> bool:
        if id(function) not in verdicts:
            verdicts[id(function)] = live.starts_processes(function)
        return verdicts[id(function)]

    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        fixtures = [d.func for defs in (definitions.name2fixturedefs.values() if definitions else []) for d in defs]
        if starts(getattr(item, "function", None)) or any(starts(fixture) for fixture in fixtures):
            item.add_marker(pytest.mark.live)
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


# Stored passwords hash with MD5 in tests that need no live process, as Django's testing docs
# advise: PBKDF2's million rounds cost ~0.4 s for every user a test makes. The defaults stay
# listed (hashes made by the defaults still check). Live tests keep the product's hashers:
# the processes they start read the real settings and must check what the test stored.
QUICK_PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]


@pytest.fixture(autouse=True)
def _quick_password_hashes(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("live") is not None:
        yield
        return
    with override_settings(PASSWORD_HASHERS=QUICK_PASSWORD_HASHERS):
        yield


@pytest.fixture(autouse=True)
def _alone_when_serial(request: pytest.FixtureRequest) -> Iterator[None]:
    with serial_lock.turn(request.node.get_closest_marker("serial") is not None):
        yield


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


@pytest.fixture(params=["fast_path", "sdk_spans"])
def spans(request: pytest.FixtureRequest, settings: Any) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span kept in memory; once with lean spans, once with the SDK's own."""
    settings.OTEL_FAST_PATH = request.param == "fast_path"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.setup(provider=provider)
    try:
        yield exporter
    finally:
        telemetry.teardown()
