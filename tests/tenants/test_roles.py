"""Roles through the admin's own views: each member sees and changes only what their role
allows, in the tenants they belong to; another tenant's objects are a 403, never the data."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_record
from routing.models import RequestLog
from tenants import services
from tenants.models import ApiKey, Membership, Quota

QUOTAS = {"quotas-TOTAL_FORMS": "0", "quotas-INITIAL_FORMS": "0"}


@pytest.fixture
def world(transactional_db, owner, outsider, key_factory):
    """Tenant "owner" with one member per role, tenant "outsider" with its own key and events."""
    members = {}
    for role in Membership.Role:
        user = User.objects.create_user(role.value, password="pw-for-tests-only")
        services.membership_save(membership=Membership(user=user, tenant=owner, role=role), actor="test")
        client = Client()
        assert client.login(username=role.value, password="pw-for-tests-only")
        members[role.value] = client
    own, foreign = key_factory(owner, "own key"), key_factory(outsider, "foreign key")
    audit_record(actor="test", action="probe.own", tenant_id=owner.pk)
    audit_record(actor="test", action="probe.foreign", tenant_id=outsider.pk)
    return members, own.key, foreign.key


def change_url(model: str, pk: int) -> str:
    return reverse(f"admin:{model}_change", args=[pk])


@pytest.mark.parametrize("role", [r.value for r in Membership.Role])
def test_members_never_see_another_tenants_objects(world, role):
    members, own, foreign = world
    client = members[role]
    keys = client.get(reverse("admin:tenants_apikey_changelist"))
    assert keys.status_code == 200
    page = keys.content.decode()
    assert own.prefix in page and foreign.prefix not in page
    assert "outsider" not in page  # not even as a choice of the tenant filter
    assert client.get(change_url("tenants_apikey", foreign.pk)).status_code == 403
    assert client.get(change_url("tenants_tenant", foreign.tenant_id)).status_code == 403
    tenants = client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    assert "outsider" not in tenants


def test_membership_makes_a_staff_user_with_the_roles_group_and_is_audited(world, owner):
    user = User.objects.get(username="auditor")
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["Auditor"]
    event = AuditEvent.objects.get(action="membership.create", target="membership:auditor@owner")
    assert event.details["changes"]["role"] == {"before": None, "after": "auditor"}


def test_tenant_admin_manages_keys_and_key_quotas_of_their_tenant_only(world, owner, outsider):
    members, own, foreign = world
    admin = members["tenant_admin"]
    response = admin.post(reverse("admin:tenants_apikey_add"), {"tenant": owner.pk, "name": "made by admin", **QUOTAS})
    assert response.status_code == 200 and "shown only this once" in response.content.decode()
    forged = admin.post(reverse("admin:tenants_apikey_add"), {"tenant": outsider.pk, "name": "sneaky", **QUOTAS})
    assert forged.status_code == 200 and "tenant" in forged.context["adminform"].form.errors
    assert not ApiKey.objects.filter(name="sneaky").exists()
    data = {
        "name": "own key",
        "allowed_models": "",
        "quotas-TOTAL_FORMS": "1",
        "quotas-INITIAL_FORMS": "0",
        "quotas-0-model": "",
        "quotas-0-rpm_limit": "30",
        "quotas-0-budget_duration": "30d",
    }
    assert admin.post(change_url("tenants_apikey", own.pk), data).status_code == 302
    assert Quota.objects.get(api_key=own).rpm_limit == 30
    assert admin.post(change_url("tenants_apikey", foreign.pk), data).status_code == 403
    assert not Quota.objects.filter(api_key=foreign).exists()


def test_tenant_admin_cannot_raise_their_tenants_own_quota(world, owner):
    members, _, _ = world
    services.quota_save(quota=Quota(tenant=owner, rpm_limit=100), actor="platform")
    page = members["tenant_admin"].get(change_url("tenants_tenant", owner.pk))
    assert page.status_code == 200 and 'name="quotas-0-rpm_limit"' not in page.content.decode()
    forged = members["tenant_admin"].post(
        change_url("tenants_tenant", owner.pk),
        {
            "slug": "owner",
            "name": "Owner",
            "quotas-TOTAL_FORMS": "1",
            "quotas-INITIAL_FORMS": "0",
            "quotas-0-rpm_limit": "100000",
            "quotas-0-budget_duration": "30d",
        },
    )
    assert forged.status_code == 403
    assert Quota.objects.get(tenant=owner).rpm_limit == 100


def test_auditor_reads_their_tenants_audit_trail_and_changes_nothing(world, owner):
    members, own, _ = world
    auditor = members["auditor"]
    events = auditor.get(reverse("admin:audit_auditevent_changelist")).content.decode()
    assert "probe.own" in events and "probe.foreign" not in events
    foreign_event = AuditEvent.objects.get(action="probe.foreign")
    assert auditor.get(change_url("audit_auditevent", foreign_event.pk)).status_code == 403
    assert auditor.get(reverse("admin:tenants_apikey_add")).status_code == 403
    response = auditor.post(
        reverse("admin:tenants_apikey_changelist"),
        {"action": "revoke_keys", "post": "yes", "_selected_action": [own.pk]},
    )
    own.refresh_from_db()
    assert own.revoked_at is None, response.status_code


def test_viewer_reads_only_and_developer_can_add_keys(world, owner):
    members, own, _ = world
    assert members["viewer"].get(change_url("tenants_apikey", own.pk)).status_code == 200
    assert members["viewer"].get(reverse("admin:tenants_apikey_add")).status_code == 403
    assert members["viewer"].get(reverse("admin:audit_auditevent_changelist")).status_code == 403
    response = members["developer"].post(
        reverse("admin:tenants_apikey_add"), {"tenant": owner.pk, "name": "dev key", **QUOTAS}
    )
    assert response.status_code == 200 and ApiKey.objects.filter(name="dev key").exists()
    assert members["developer"].get(reverse("admin:routing_modeldeployment_changelist")).status_code == 403


def test_roles_in_two_tenants_apply_each_in_its_own_tenant(world, outsider):
    members, own, foreign = world
    user = User.objects.get(username="tenant_admin")
    services.membership_save(membership=Membership(user=user, tenant=outsider, role="viewer"), actor="test")
    admin = members["tenant_admin"]
    assert admin.get(change_url("tenants_apikey", foreign.pk)).status_code == 200
    admin.post(
        reverse("admin:tenants_apikey_changelist"),
        {"action": "revoke_keys", "post": "yes", "_selected_action": [foreign.pk, own.pk]},
    )
    foreign.refresh_from_db()
    own.refresh_from_db()
    assert foreign.revoked_at is None and own.revoked_at is not None


def test_usage_rows_are_scoped_like_everything_else(world, owner, outsider):
    members, _, _ = world
    from django.utils import timezone

    for tenant, request_id in ((owner, "req_own_row"), (outsider, "req_foreign_row")):
        RequestLog.objects.create(request_id=request_id, created_at=timezone.now(), tenant=tenant, status_code=200)
    page = members["viewer"].get(reverse("admin:routing_requestlog_changelist")).content.decode()
    assert "req_own_row" in page and "req_foreign_row" not in page
    assert "outsider" not in page  # the tenant filter offers only the member's tenants


def test_a_tenant_admin_adds_members_by_username_without_seeing_other_tenants_users(world, owner, outsider):
    members, _, _ = world
    stranger = User.objects.create_user("stranger-in-outsider", password="pw-for-tests-only")
    services.membership_save(membership=Membership(user=stranger, tenant=outsider, role="viewer"), actor="test")
    User.objects.create_user("newcomer", password="pw-for-tests-only")
    client = members["tenant_admin"]
    add_url = reverse("admin:tenants_membership_add")
    page = client.get(add_url).content.decode()
    assert "stranger-in-outsider" not in page and "newcomer" not in page
    refused = client.post(add_url, {"username": "nobody-by-that-name", "tenant": owner.pk, "role": "viewer"})
    assert refused.status_code == 200
    assert "There is no user with that username" in refused.content.decode()
    assert client.post(add_url, {"username": "newcomer", "tenant": owner.pk, "role": "developer"}).status_code == 302
    assert Membership.objects.get(user__username="newcomer").tenant_id == owner.pk
    assert AuditEvent.objects.filter(action="membership.create", target="membership:newcomer@owner").exists()
    foreign = client.post(add_url, {"username": "newcomer", "tenant": outsider.pk, "role": "viewer"})
    assert not Membership.objects.filter(user__username="newcomer", tenant=outsider).exists()
    assert foreign.status_code in (200, 403)
    membership = Membership.objects.get(user__username="newcomer")
    change = client.get(change_url("tenants_membership", membership.pk))
    assert change.status_code == 200 and 'value="newcomer"' in change.content.decode()
    assert (
        client.post(
            change_url("tenants_membership", membership.pk), {"tenant": owner.pk, "role": "auditor"}
        ).status_code
        == 302
    )
    membership.refresh_from_db()
    assert (membership.user.username, membership.role) == ("newcomer", "auditor")


@pytest.mark.django_db
def test_each_app_grants_only_on_its_own_models_and_every_grant_names_a_real_permission() -> None:
    from django.apps import apps
    from django.contrib.auth.models import Permission

    from core.permissions import ROLE_PERMISSIONS, SCOPE_READS

    labels = {label for grants in ROLE_PERMISSIONS.values() for label in grants}
    assert {label.split(".")[0] for label in labels} == {"tenants", "routing", "mcp", "audit"}
    for grants in ROLE_PERMISSIONS.values():
        for label, actions in grants.items():
            model = apps.get_model(label)  # raises for a model that does not exist
            for action in actions:
                codename = f"{action}_{model._meta.model_name}"
                assert Permission.objects.filter(
                    content_type__app_label=model._meta.app_label, codename=codename
                ).exists()
    assert SCOPE_READS == {"audit": ("audit.auditevent", "view")}


@pytest.mark.django_db
def test_after_migrate_each_role_group_holds_exactly_its_grants() -> None:
    """One sync at the end of migrate (on the platform app's turn) sees every granting app's permissions."""
    from django.contrib.auth.models import Group

    from core.permissions import ROLE_PERMISSIONS
    from tenants.roles import ROLE_LABELS

    for role, grants in ROLE_PERMISSIONS.items():
        wanted = {
            f"{label.split('.')[0]}.{action}_{label.split('.')[1]}"
            for label, actions in grants.items()
            for action in actions
        }
        group = Group.objects.get(name=ROLE_LABELS[role])
        held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
        assert held == wanted, role
