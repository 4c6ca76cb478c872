"""The key cache: fresh for a TTL, dropped in every process when a key or tenant changes."""

from __future__ import annotations

import hashlib

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import override_settings

from core.errors import AuthenticationFailed, PermissionDenied
from tenants import auth, services
from tenants.auth import KeyCache, key_authenticate
from tenants.models import Tenant


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture(autouse=True)
async def close_thread_connections():
    yield
    # Lookups ran in asgiref's sync thread; close its connection so the test database can be dropped.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def issued(transactional_db):
    tenant = services.tenant_save(tenant=Tenant(slug="cache", name="Cache"), actor="test")
    key, secret = services.api_key_create(tenant=tenant, name="k", actor="test")
    return tenant, key, secret


@override_settings(KEY_CACHE_TTL=3600, KEY_REVOCATION_POLL=0)
async def test_revocation_reaches_a_cache_in_another_process_through_the_shared_epoch(issued):
    _, key, secret = issued
    other_process = KeyCache()  # a second cache, as another server process holds
    await other_process.lookup(digest(secret))  # warm, with a TTL of an hour
    await sync_to_async(services.api_key_revoke)(api_key=key, actor="test")
    context = await other_process.lookup(digest(secret))
    assert context is not None and context.revoked


@override_settings(KEY_CACHE_TTL=3600, KEY_REVOCATION_POLL=3600)
async def test_without_an_epoch_change_lookups_are_served_from_memory(issued, monkeypatch):
    _, _, secret = issued
    fetches = []
    real_fetch = auth._key_fetch

    async def counting_fetch(secret_hash):
        fetches.append(secret_hash)
        return await real_fetch(secret_hash)

    monkeypatch.setattr(auth, "_key_fetch", counting_fetch)
    cache = KeyCache()
    for _ in range(20):
        assert await cache.lookup(digest(secret)) is not None
    assert len(fetches) == 1


@override_settings(KEY_REVOCATION_POLL=0)
async def test_deactivating_the_tenant_refuses_its_keys(issued):
    tenant, _, secret = issued
    assert (await key_authenticate(secret, digest(secret))).tenant_slug == "cache"
    tenant.is_active = False
    await sync_to_async(services.tenant_save)(tenant=tenant, actor="test")
    with pytest.raises(PermissionDenied) as refused:
        await key_authenticate(secret, digest(secret))
    assert refused.value.code == "tenant_inactive"


@override_settings(KEY_REVOCATION_POLL=0)
async def test_a_key_created_after_a_failed_lookup_works_at_once(issued):
    tenant, _, _ = issued
    secret = "sk-created-later-0123456789abcdef"
    with pytest.raises(AuthenticationFailed):
        await key_authenticate(secret, digest(secret))  # now negatively cached
    await sync_to_async(services.api_key_create)(tenant=tenant, name="later", actor="test", secret=secret)
    assert (await key_authenticate(secret, digest(secret))).prefix == secret[:12]
