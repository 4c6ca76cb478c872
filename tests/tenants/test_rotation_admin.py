"""Rotation in the admin: what is due, rotating now with the secret shown once, and a held secret
collected once by a tenant admin of that tenant only."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from tenants import rotation, services
from tenants.models import ApiKey, Membership, key_hash


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(transactional_db) -> Client:
    return login(User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only"))


def member(tenant, role: str, name: str) -> Client:
    user = User.objects.create_user(name, password="pw-for-tests-only")
    services.membership_save(membership=Membership(user=user, tenant=tenant, role=role), actor="test")
    return login(user)


@pytest.fixture
def due_key(owner, key_factory):
    issued = key_factory(owner, "backend", max_age_days=10)
    ApiKey.objects.filter(pk=issued.key.pk).update(created_at=timezone.now() - dt.timedelta(days=11))
    return issued.key


def test_changelist_shows_due_keys_in_a_column_and_a_filter(superuser, due_key, owner, key_factory) -> None:
    key_factory(owner, "fresh", max_age_days=10)
    url = reverse("admin:tenants_apikey_changelist")
    page = superuser.get(url).content.decode()
    assert "Secret rotation" in page and ">due<" in page
    filtered = superuser.get(url, {"rotation": "due"}).content.decode()
    assert "backend" in filtered and "fresh" not in filtered
    status = superuser.get(reverse("admin:tenants_apikey_rotation")).content.decode()
    assert "API keys due for rotation (1)" in status and "routing.ModelDeployment.api_key" in status


def test_rotate_action_shows_the_new_secret_once(superuser, due_key) -> None:
    response = superuser.post(
        reverse("admin:tenants_apikey_changelist"),
        {"action": "rotate_keys", "_selected_action": [due_key.pk]},
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = response.content.decode().split('class="rotated-secret" type="text" readonly value="')[1].split('"')[0]
    new = ApiKey.objects.get(rotated_from=due_key)
    assert new.secret_hash == key_hash(secret)
    assert new.pending_secret == ""  # shown to the person who rotated; nothing is held
    assert AuditEvent.objects.filter(action="api_key.rotate", actor="user:root").exists()


def test_a_held_secret_is_collected_once_by_a_tenant_admin_of_its_tenant(owner, outsider, due_key) -> None:
    rotation.secret_rotate(actor="system:test")
    new = ApiKey.objects.get(rotated_from=due_key)
    url = reverse("admin:tenants_apikey_collect", args=[new.pk])
    assert member(outsider, "tenant_admin", "stranger").post(url).status_code == 403
    assert member(owner, "developer", "dev").post(url).status_code == 403
    admin = member(owner, "tenant_admin", "boss")
    assert "Show the secret once" in admin.get(url).content.decode()
    first = admin.post(url)
    assert "no-store" in first["Cache-Control"]
    secret = first.content.decode().split('id="api-key-secret" type="text" readonly value="')[1].split('"')[0]
    assert key_hash(secret) == new.secret_hash
    assert "already collected" in admin.post(url).content.decode()
    new.refresh_from_db()
    assert new.pending_secret == ""
    assert AuditEvent.objects.filter(action="api_key.secret_collect", actor="user:boss").count() == 1


def test_run_rotation_now_is_for_platform_admins(superuser, owner, due_key) -> None:
    url = reverse("admin:tenants_apikey_rotation")
    assert member(owner, "tenant_admin", "boss").post(url).status_code == 403
    assert superuser.post(url).status_code == 302
    assert ApiKey.objects.filter(rotated_from=due_key).exists()
