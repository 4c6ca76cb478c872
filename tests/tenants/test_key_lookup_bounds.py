"""Key lookups wait on the database for a bounded time, once per key, never behind asgiref's shared thread."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from core.breaker import database_breaker
from core.epoch import SharedEpoch
from core.errors import ServiceUnavailable
from tenants import auth, services
from tenants.auth import KeyCache
from tenants.models import Tenant

pytestmark = pytest.mark.usefixtures("stores_reset")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture
def issued(transactional_db):
    tenant = services.tenant_save(tenant=Tenant(slug="bounds", name="Bounds"), actor="test")
    return [services.api_key_create(tenant=tenant, name=f"k{n}", actor="test")[1] for n in range(2)]


@pytest.fixture
def hanging_database(monkeypatch):
    """Key reads that never answer, as on a black-holed connection; counts the reads started."""
    started: list[str] = []
    never = asyncio.Event()

    async def hang(secret_hash):
        started.append(secret_hash)
        await never.wait()

    def down():
        monkeypatch.setattr(auth, "_key_fetch", hang)
        return started

    return down


@override_settings(KEY_CACHE_TTL=3600, DB_READ_WAIT=0.3)
async def test_an_unseen_key_gets_503_within_the_read_wait_while_known_keys_are_served(issued, hanging_database):
    cache = KeyCache()
    known, unseen = issued
    assert await cache.lookup(digest(known)) is not None
    hanging_database()
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as refused:
        await asyncio.wait_for(cache.lookup(digest(unseen)), 5)
    assert refused.value.code == "auth_backend_unavailable"
    assert 0.25 <= time.monotonic() - started < 0.6
    assert database_breaker.state == "open"
    started = time.monotonic()
    assert await cache.lookup(digest(known)) is not None
    assert time.monotonic() - started < 0.05


@override_settings(KEY_CACHE_TTL=0.05, DB_READ_WAIT=0.5)
async def test_a_stale_key_is_served_at_once_and_reloaded_behind(issued, hanging_database):
    cache = KeyCache()
    known, _ = issued
    assert await cache.lookup(digest(known)) is not None
    await asyncio.sleep(0.1)  # past its TTL
    reads = hanging_database()
    started = time.monotonic()
    for _ in range(20):
        assert await cache.lookup(digest(known)) is not None
    assert time.monotonic() - started < 0.05
    await asyncio.sleep(0.01)  # the reload starts once the loop gets a turn
    assert len(reads) == 1, "one reload in flight for the key, not one per request"


@override_settings(KEY_CACHE_TTL=3600, DB_READ_WAIT=0.3)
async def test_concurrent_lookups_of_an_unseen_key_share_one_database_read(issued, monkeypatch):
    cache = KeyCache()
    _, unseen = issued
    reads = []
    real_fetch = auth._key_fetch

    async def counting_fetch(secret_hash):
        reads.append(secret_hash)
        await asyncio.sleep(0.05)
        return await real_fetch(secret_hash)

    monkeypatch.setattr(auth, "_key_fetch", counting_fetch)
    contexts = await asyncio.gather(*(cache.lookup(digest(unseen)) for _ in range(25)))
    assert all(context is not None for context in contexts)
    assert len(reads) == 1


@override_settings(KEY_CACHE_TTL=3600, DB_READ_WAIT=1.0)
async def test_a_key_lookup_does_not_queue_behind_the_shared_sync_thread(issued):
    """Whatever else holds asgiref's one thread-sensitive thread (a stuck cache read, an ORM call) is not waited for."""
    cache = KeyCache()
    _, unseen = issued
    blocker = asyncio.ensure_future(sync_to_async(time.sleep, thread_sensitive=True)(1.5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await cache.lookup(digest(unseen)) is not None
    assert time.monotonic() - started < 0.5
    await blocker


@pytest.fixture
def silent_redis():
    """A Redis address that accepts connections and never answers (a black hole)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


@pytest.mark.serial  # a bound on time
async def test_reading_the_shared_epoch_never_waits_on_a_silent_redis(silent_redis, settings):
    settings.REDIS_URL = silent_redis
    settings.KEY_REVOCATION_POLL = 0.05
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": silent_redis,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    epoch = SharedEpoch("apikey")
    slowest = 0.0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        started = time.monotonic()
        await epoch.moved()
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.02)
    assert slowest < 0.01, f"a check of the epoch took {slowest * 1000:.0f} ms"
