"""Who may do what with API keys, in the admin and in the services behind it (and so in every other way).

A role gives a key only the scopes whose data it may see itself; developers create keys
and manage only the ones they created; limits are set by tenant admins (a key's) and
platform admins (a tenant's); the system (config-as-code, the scheduler) is not bound.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tenants import rotation, services
from tenants.models import ApiKey, Membership, Quota
from tenants.roles import NotAllowed

QUOTAS = {"quotas-TOTAL_FORMS": "0", "quotas-INITIAL_FORMS": "0"}
CHANGELIST = "admin:tenants_apikey_changelist"


def person(username: str, tenant, role: str) -> User:
    user = User.objects.create_user(username, password="pw-for-tests-only")
    services.membership_save(membership=Membership(user=user, tenant=tenant, role=role), actor="test")
    return user


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def key_of(user: User, tenant, name: str, **fields: object) -> ApiKey:
    key, _ = services.api_key_create(
        tenant=tenant, name=name, actor=f"user:{user.username}", created_by=user, acting_user=user, **fields
    )
    return key


@pytest.fixture
def team(owner, outsider):
    """In "owner": developers dev_a and dev_b, tenant admin boss, auditor; in "outsider": its own tenant admin."""
    return {
        "dev_a": person("dev_a", owner, "developer"),
        "dev_b": person("dev_b", owner, "developer"),
        "boss": person("boss", owner, "tenant_admin"),
        "auditor": person("auditor", owner, "auditor"),
        "stranger": person("stranger", outsider, "tenant_admin"),
    }


def change_url(key: ApiKey) -> str:
    return reverse("admin:tenants_apikey_change", args=[key.pk])


def key_form(key: ApiKey, **fields: object) -> dict[str, object]:
    return {"name": key.name, "allowed_models": "", **QUOTAS, **fields}


# --- scopes: a key reads only what its maker may see ---


def test_a_developer_is_not_offered_the_audit_scope_and_a_forged_one_is_a_form_error(team, owner):
    dev = client_of(team["dev_a"])
    page = dev.get(reverse("admin:tenants_apikey_add")).content.decode()
    assert 'value="chat"' in page and 'value="feedback"' in page and 'value="audit"' not in page
    forged = dev.post(
        reverse("admin:tenants_apikey_add"), {"tenant": owner.pk, "name": "reader", "scopes": ["audit"], **QUOTAS}
    )
    assert forged.status_code == 200 and "scopes" in forged.context["adminform"].form.errors
    assert not ApiKey.objects.filter(name="reader").exists()


def test_a_developer_cannot_add_the_audit_scope_to_their_own_key_later(team):
    own = key_of(team["dev_a"], team["dev_a"].memberships.get().tenant, "mine", scopes=["chat"])
    response = client_of(team["dev_a"]).post(change_url(own), key_form(own, scopes=["chat", "audit"]))
    assert response.status_code == 200 and "scopes" in response.context["adminform"].form.errors
    own.refresh_from_db()
    assert own.scopes == ["chat"]


def test_the_services_refuse_a_developer_the_audit_scope_on_every_way_a_key_is_made(team, owner):
    dev = team["dev_a"]
    with pytest.raises(NotAllowed) as refused:
        key_of(dev, owner, "reader", scopes=["audit"])
    assert refused.value.code == "scope_not_grantable" and refused.value.status == 403
    own = key_of(dev, owner, "mine", scopes=["chat"])
    own.scopes = ["audit"]
    with pytest.raises(NotAllowed):
        services.api_key_update(api_key=own, actor="user:dev_a", acting_user=dev)
    # A key someone else granted the scope (here the system) is not re-granted by a developer's rotation.
    legacy, _ = services.api_key_create(tenant=owner, name="legacy", actor="config", scopes=["audit"], created_by=dev)
    with pytest.raises(NotAllowed):
        rotation.api_key_rotate(api_key=legacy, actor="user:dev_a", acting_user=dev)
    assert not ApiKey.objects.filter(rotated_from=legacy).exists()
    assert set(ApiKey.objects.values_list("name", flat=True)) == {"mine", "legacy"}


def test_a_tenant_admin_grants_the_audit_scope_and_the_key_reads_the_trail(team, owner):
    response = client_of(team["boss"]).post(
        reverse("admin:tenants_apikey_add"), {"tenant": owner.pk, "name": "siem", "scopes": ["audit"], **QUOTAS}
    )
    assert response.status_code == 200 and "shown only this once" in response.content.decode()
    secret = response.content.decode().split('id="api-key-secret" type="text" readonly value="')[1].split('"')[0]
    listing = Client().get("/v1/audit/events", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert listing.status_code == 200 and listing.json()["object"] == "list"


def test_the_system_grants_any_scope(owner):
    key, _ = services.api_key_create(tenant=owner, name="from config", actor="config:test", scopes=["audit", "chat"])
    assert key.scopes == ["audit", "chat"]


# --- developers manage only the keys they created ---


def test_developer_a_cannot_revoke_developer_bs_key_but_a_tenant_admin_can(team, owner):
    mine, theirs = key_of(team["dev_a"], owner, "a's key"), key_of(team["dev_b"], owner, "b's key")
    response = client_of(team["dev_a"]).post(
        reverse(CHANGELIST),
        {"action": "revoke_keys", "post": "yes", "_selected_action": [mine.pk, theirs.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "Revoked 1 API key(s)." in page and "1 selected key(s) left alone" in page
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None
    with pytest.raises(NotAllowed):
        services.api_key_revoke(api_key=theirs, actor="user:dev_a", acting_user=team["dev_a"])
    client_of(team["boss"]).post(
        reverse(CHANGELIST), {"action": "revoke_keys", "post": "yes", "_selected_action": [theirs.pk]}
    )
    theirs.refresh_from_db()
    assert theirs.revoked_at is not None


def test_a_developer_sees_every_key_of_the_tenant_but_changes_only_their_own(team, owner):
    mine, theirs = key_of(team["dev_a"], owner, "a's key"), key_of(team["dev_b"], owner, "b's key")
    dev = client_of(team["dev_a"])
    listing = dev.get(reverse(CHANGELIST)).content.decode()
    assert mine.prefix in listing and theirs.prefix in listing
    view = dev.get(change_url(theirs))
    assert view.status_code == 200 and 'name="name"' not in view.content.decode()  # read-only
    assert dev.post(change_url(theirs), key_form(theirs, name="hijacked")).status_code == 403
    assert dev.post(change_url(mine), key_form(mine, name="renamed")).status_code == 302
    assert ApiKey.objects.get(pk=theirs.pk).name == "b's key" and ApiKey.objects.get(pk=mine.pk).name == "renamed"
    theirs.name = "hijacked"
    with pytest.raises(NotAllowed):
        services.api_key_update(api_key=theirs, actor="user:dev_a", acting_user=team["dev_a"])


def test_a_developer_rotates_only_their_own_keys(team, owner):
    mine, theirs = key_of(team["dev_a"], owner, "a's key"), key_of(team["dev_b"], owner, "b's key")
    response = client_of(team["dev_a"]).post(
        reverse(CHANGELIST), {"action": "rotate_keys", "_selected_action": [mine.pk, theirs.pk]}
    )
    assert response.status_code == 200 and "API keys rotated" in response.content.decode()
    successor = ApiKey.objects.get(rotated_from=mine)
    assert successor.created_by == team["dev_a"]  # the owner keeps managing the successor
    assert not ApiKey.objects.filter(rotated_from=theirs).exists()
    with pytest.raises(NotAllowed):
        rotation.api_key_rotate(api_key=theirs, actor="user:dev_a", acting_user=team["dev_a"])


def test_a_held_secret_is_collected_by_the_keys_owner_or_a_tenant_admin_only(team, owner):
    mine, theirs = key_of(team["dev_a"], owner, "a's key", max_age_days=1), key_of(team["dev_b"], owner, "b's key")
    ApiKey.objects.filter(pk=mine.pk).update(created_at=timezone.now() - dt.timedelta(days=2))
    rotation.secret_rotate(actor="system:test")
    held = ApiKey.objects.get(rotated_from=mine)
    url = reverse("admin:tenants_apikey_collect", args=[held.pk])
    assert client_of(team["dev_b"]).post(url).status_code == 403
    assert client_of(team["stranger"]).post(url).status_code == 403
    with pytest.raises(NotAllowed):
        rotation.api_key_secret_collect(api_key=held, actor="user:dev_b", acting_user=team["dev_b"])
    collected = client_of(team["dev_a"]).post(url)
    assert collected.status_code == 200 and 'id="api-key-secret"' in collected.content.decode()
    held.refresh_from_db()
    assert held.pending_secret == "" and theirs.pending_secret == ""


def test_a_developer_cannot_delete_keys(team, owner):
    mine = key_of(team["dev_a"], owner, "a's key")
    dev = client_of(team["dev_a"])
    assert dev.post(reverse("admin:tenants_apikey_delete", args=[mine.pk]), {"post": "yes"}).status_code == 403
    dev.post(reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": [mine.pk], "post": "yes"})
    assert ApiKey.objects.filter(pk=mine.pk).exists()


# --- limits: tenant admins set a key's, platform admins a tenant's; developers none ---


def test_a_developer_never_sets_a_quota_not_even_on_their_own_key(team, owner):
    mine = key_of(team["dev_a"], owner, "a's key")
    forged = {
        **key_form(mine),
        "quotas-TOTAL_FORMS": "1",
        "quotas-0-model": "",
        "quotas-0-rpm_limit": "100000",
        "quotas-0-budget_duration": "30d",
    }
    client_of(team["dev_a"]).post(change_url(mine), forged)
    assert not Quota.objects.filter(api_key=mine).exists()
    with pytest.raises(NotAllowed):
        services.quota_save(quota=Quota(api_key=mine, rpm_limit=5), actor="user:dev_a", acting_user=team["dev_a"])
    page = client_of(team["dev_a"]).get(reverse("admin:tenants_apikey_add")).content.decode()
    assert "Every key is bound by its tenant's quotas" in page


def test_a_tenant_admin_limits_keys_of_their_tenant_but_not_the_tenant_itself(team, owner, outsider, key_factory):
    boss = team["boss"]
    key = key_factory(owner, "service").key
    quota = services.quota_save(quota=Quota(api_key=key, rpm_limit=5), actor="user:boss", acting_user=boss)
    assert quota.pk is not None
    with pytest.raises(NotAllowed):
        services.quota_save(quota=Quota(tenant=owner, rpm_limit=10**6), actor="user:boss", acting_user=boss)
    platform = services.quota_save(quota=Quota(tenant=owner, rpm_limit=100), actor="config")
    platform.rpm_limit = 10**6
    with pytest.raises(NotAllowed):
        services.quota_save(quota=platform, actor="user:boss", acting_user=boss)
    with pytest.raises(NotAllowed):
        services.quota_delete(quota=platform, actor="user:boss", acting_user=boss)
    foreign = key_factory(outsider, "foreign").key
    with pytest.raises(NotAllowed):
        services.quota_save(quota=Quota(api_key=foreign, rpm_limit=5), actor="user:boss", acting_user=boss)
    assert Quota.objects.get(tenant=owner).rpm_limit == 100


# --- the same rules for the other tenant-scoped writes ---


def test_a_tenant_admin_cannot_manage_another_tenants_keys_or_members(team, owner, outsider, key_factory):
    boss, foreign = team["boss"], key_factory(outsider, "foreign").key
    with pytest.raises(NotAllowed):
        services.api_key_create(tenant=outsider, name="sneaky", actor="user:boss", acting_user=boss)
    with pytest.raises(NotAllowed):
        services.api_key_revoke(api_key=foreign, actor="user:boss", acting_user=boss)
    with pytest.raises(NotAllowed):
        services.membership_save(
            membership=Membership(user=boss, tenant=outsider, role="tenant_admin"), actor="user:boss", acting_user=boss
        )
    mine = Membership.objects.get(user=team["dev_a"])
    mine.tenant = outsider
    with pytest.raises(NotAllowed):
        services.membership_save(membership=mine, actor="user:boss", acting_user=boss)
    assert not Membership.objects.filter(tenant=outsider, user__in=[boss, team["dev_a"]]).exists()


def test_a_membership_keeps_its_user_when_a_tenant_admin_edits_it(team):
    membership = Membership.objects.get(user=team["dev_a"])
    membership.user = team["boss"]
    membership.role = "auditor"
    with pytest.raises(NotAllowed):
        services.membership_save(membership=membership, actor="user:boss", acting_user=team["boss"])


def test_members_cannot_change_tenants_only_platform_admins_can(team, owner):
    owner.trace_content = True
    with pytest.raises(NotAllowed):
        services.tenant_save(tenant=owner, actor="user:boss", acting_user=team["boss"])
    owner.refresh_from_db()
    assert owner.trace_content is False
