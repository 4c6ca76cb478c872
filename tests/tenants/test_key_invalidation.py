"""A key change drops only what it changed, so a database outage right after it still serves every other key."""

from __future__ import annotations

import hashlib

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import override_settings

from core.errors import ServiceUnavailable
from tenants import auth, services
from tenants.auth import KeyCache
from tenants.models import Quota, Tenant

pytestmark = pytest.mark.usefixtures("stores_reset")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture
def issued(transactional_db):
    """Two tenants; ``a`` has two keys, ``b`` one."""
    a = services.tenant_save(tenant=Tenant(slug="inval-a", name="A"), actor="test")
    b = services.tenant_save(tenant=Tenant(slug="inval-b", name="B"), actor="test")
    keys = {
        "a1": services.api_key_create(tenant=a, name="a1", actor="test"),
        "a2": services.api_key_create(tenant=a, name="a2", actor="test"),
        "b1": services.api_key_create(tenant=b, name="b1", actor="test"),
    }
    return {"a": a, "b": b}, keys


async def warm(cache: KeyCache, keys) -> None:
    for _, secret in keys.values():
        assert await cache.lookup(digest(secret)) is not None


@pytest.fixture
def database_down(monkeypatch):
    async def unreachable(secret_hash):
        raise OperationalError("connection to server lost")

    def down():
        monkeypatch.setattr(auth, "_key_fetch", unreachable)

    return down


@override_settings(KEY_CACHE_TTL=0.01, KEY_REVOCATION_POLL=0)
async def test_a_revocation_then_a_database_outage_refuses_only_the_revoked_key(issued, database_down):
    _, keys = issued
    other_process = KeyCache()
    await warm(other_process, keys)
    await sync_to_async(services.api_key_revoke)(api_key=keys["a1"][0], actor="test")
    database_down()
    with pytest.raises(ServiceUnavailable) as refused:
        await other_process.lookup(digest(keys["a1"][1]))
    assert refused.value.code == "auth_backend_unavailable"
    for name in ("a2", "b1"):
        context = await other_process.lookup(digest(keys[name][1]))
        assert context is not None and context.key_id == keys[name][0].pk


@override_settings(KEY_CACHE_TTL=0.01, KEY_REVOCATION_POLL=0)
async def test_a_tenant_change_drops_that_tenants_keys_and_no_other(issued, database_down):
    tenants, keys = issued
    other_process = KeyCache()
    await warm(other_process, keys)
    tenant = tenants["a"]
    tenant.is_active = False
    await sync_to_async(services.tenant_save)(tenant=tenant, actor="test")
    database_down()
    for name in ("a1", "a2"):
        with pytest.raises(ServiceUnavailable):
            await other_process.lookup(digest(keys[name][1]))
    assert (await other_process.lookup(digest(keys["b1"][1]))) is not None


@override_settings(KEY_CACHE_TTL=0.01, KEY_REVOCATION_POLL=0)
async def test_a_key_quota_drops_that_key_and_a_tenant_quota_the_tenants_keys(issued, database_down):
    tenants, keys = issued
    other_process = KeyCache()
    await warm(other_process, keys)
    await sync_to_async(services.quota_save)(quota=Quota(api_key=keys["a1"][0], rpm_limit=5), actor="test")
    await sync_to_async(services.quota_save)(quota=Quota(tenant=tenants["b"], rpm_limit=5), actor="test")
    database_down()
    for name in ("a1", "b1"):
        with pytest.raises(ServiceUnavailable):
            await other_process.lookup(digest(keys[name][1]))
    assert (await other_process.lookup(digest(keys["a2"][1]))) is not None


@override_settings(KEY_CACHE_TTL=3600, KEY_REVOCATION_POLL=0)
async def test_a_created_key_is_no_longer_cached_as_unknown(issued):
    tenants, _ = issued
    other_process = KeyCache()
    secret = "sk-configured-before-it-existed-0001"
    assert await other_process.lookup(digest(secret)) is None  # tried before it was created
    await sync_to_async(services.api_key_create)(tenant=tenants["b"], name="late", actor="test", secret=secret)
    context = await other_process.lookup(digest(secret))
    assert context is not None and context.tenant_id == tenants["b"].pk


@override_settings(KEY_CACHE_TTL=3600, KEY_REVOCATION_POLL=0)
async def test_a_rotation_drops_the_old_key_so_its_grace_expiry_is_seen(issued, database_down):
    from tenants.rotation import api_key_rotate

    _, keys = issued
    other_process = KeyCache()
    await warm(other_process, keys)
    rotation = await sync_to_async(api_key_rotate)(api_key=keys["a1"][0], actor="test")
    context = await other_process.lookup(digest(keys["a1"][1]))
    assert context is not None and context.expires_at == rotation.old.expires_at
    database_down()
    assert (await other_process.lookup(digest(keys["a2"][1]))) is not None


@override_settings(KEY_CACHE_TTL=3600, KEY_REVOCATION_POLL=0)
async def test_a_renamed_tenant_is_seen_by_its_cached_keys(issued):
    tenants, keys = issued
    other_process = KeyCache()
    await warm(other_process, keys)
    tenant = tenants["b"]
    tenant.slug = "inval-b-renamed"
    await sync_to_async(services.tenant_save)(tenant=tenant, actor="test")
    context = await other_process.lookup(digest(keys["b1"][1]))
    assert context is not None and context.tenant_slug == "inval-b-renamed"
