"""The audited-change helper: the change and its audit event commit together, or neither does."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from audit.models import AuditEvent
from core.changes import AuditRecorder
from routing.models import RouteGroup
from routing.services import route_group_delete, route_group_save
from tenants.models import Tenant
from tenants.services import tenant_save


@pytest.mark.django_db
def test_a_save_writes_its_event_with_the_changes_and_a_no_op_save_writes_nothing():
    group = route_group_save(group=RouteGroup(model_name="m", num_retries=1), actor="test")
    group.num_retries = 2
    route_group_save(group=group, actor="test")
    route_group_save(group=RouteGroup.objects.get(pk=group.pk), actor="test")

    events = list(AuditEvent.objects.filter(target__startswith="route_group:").order_by("id"))
    assert [event.action for event in events] == ["route_group.create", "route_group.change"]
    assert events[1].details["changes"] == {"num_retries": {"before": 1, "after": 2}}
    assert RouteGroup.objects.get(pk=group.pk).version == 2


@pytest.mark.django_db
def test_a_refused_save_leaves_neither_the_row_nor_an_event():
    with pytest.raises(ValidationError):
        tenant_save(tenant=Tenant(slug="not a slug!", name="x"), actor="test")

    assert not Tenant.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="tenant.").exists()


@pytest.mark.django_db
def test_a_delete_records_what_the_row_was_under_the_target_it_had():
    group = route_group_save(group=RouteGroup(model_name="gone"), actor="test")
    target = f"route_group:{group.pk}:gone"
    route_group_delete(group=group, actor="test")

    event = AuditEvent.objects.get(action="route_group.delete")
    assert event.target == target
    assert event.details["before"]["model_name"] == "gone"


def test_without_an_installed_recorder_a_change_is_refused_not_left_unaudited():
    with pytest.raises(ImproperlyConfigured):
        AuditRecorder()(actor="test", action="x.change", target="x", tenant_id=None, ip=None, details={})
