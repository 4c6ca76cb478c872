"""State changes to tenants and API keys; each writes its audit event in the same transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from audit.services import audit_record, changes_between
from tenants.auth import key_cache_invalidate
from tenants.models import ApiKey, Membership, Quota, Tenant, key_generate
from tenants.roles import ROLE_LABELS


def snapshot(instance: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """JSON-safe field values of ``instance`` for an audit before/after pair."""
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        if isinstance(value, models.Model):
            value = value.pk
        elif isinstance(value, (dt.datetime, dt.date)):
            value = value.isoformat()
        values[name] = value
    return values


TENANT_AUDIT_FIELDS = ("slug", "name", "is_active", "key_max_age_days", "trace_content")
KEY_AUDIT_FIELDS = ("name", "tenant", "prefix", "allowed_models", "scopes", "expires_at", "revoked_at", "max_age_days")


def _before(model: type[models.Model], pk: Any, fields: Iterable[str]) -> dict[str, Any]:
    if pk is None:
        return {}
    old = model._default_manager.filter(pk=pk).first()
    return snapshot(old, fields) if old is not None else {}


@transaction.atomic
def tenant_save(*, tenant: Tenant, actor: str, ip: str | None = None) -> Tenant:
    before = _before(Tenant, tenant.pk, TENANT_AUDIT_FIELDS)
    tenant.full_clean()
    tenant.save()
    after = snapshot(tenant, TENANT_AUDIT_FIELDS)
    audit_record(
        actor=actor,
        action="tenant.change" if before else "tenant.create",
        target=f"tenant:{tenant.slug}",
        tenant_id=tenant.pk,
        ip=ip,
        details={"changes": changes_between(before, after)},
    )
    # Both are read on the hot path through the key cache.
    if before.get("is_active") != after.get("is_active") or before.get("trace_content") != after.get("trace_content"):
        transaction.on_commit(key_cache_invalidate)
    return tenant


@transaction.atomic
def tenant_delete(*, tenant: Tenant, actor: str, ip: str | None = None) -> None:
    before = snapshot(tenant, TENANT_AUDIT_FIELDS)
    tenant_id, slug = tenant.pk, tenant.slug
    tenant.delete()
    audit_record(
        actor=actor,
        action="tenant.delete",
        target=f"tenant:{slug}",
        tenant_id=tenant_id,
        ip=ip,
        details={"before": before},
    )
    transaction.on_commit(key_cache_invalidate)


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    actor: str,
    secret: str | None = None,
    allowed_models: list[str] | None = None,
    scopes: list[str] | None = None,
    expires_at: dt.datetime | None = None,
    max_age_days: int | None = None,
    created_by: Any = None,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext secret, which is never stored."""
    secret = secret or key_generate()
    api_key = ApiKey(
        tenant=tenant,
        name=name,
        allowed_models=allowed_models or [],
        scopes=scopes or [],
        expires_at=expires_at,
        max_age_days=max_age_days,
        created_by=created_by,
    )
    api_key.set_secret(secret)
    api_key.full_clean()
    api_key.save()
    audit_record(
        actor=actor,
        action="api_key.create",
        target=f"api_key:{api_key.prefix}",
        tenant_id=tenant.pk,
        ip=ip,
        details={"after": snapshot(api_key, KEY_AUDIT_FIELDS)},
    )
    transaction.on_commit(key_cache_invalidate)
    return api_key, secret


@transaction.atomic
def api_key_update(*, api_key: ApiKey, actor: str, ip: str | None = None) -> ApiKey:
    before = _before(ApiKey, api_key.pk, KEY_AUDIT_FIELDS)
    api_key.full_clean()
    api_key.save()
    after = snapshot(api_key, KEY_AUDIT_FIELDS)
    audit_record(
        actor=actor,
        action="api_key.change",
        target=f"api_key:{api_key.prefix}",
        tenant_id=api_key.tenant_id,
        ip=ip,
        details={"changes": changes_between(before, after)},
    )
    transaction.on_commit(key_cache_invalidate)
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: str, ip: str | None = None) -> ApiKey:
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action="api_key.revoke",
        target=f"api_key:{api_key.prefix}",
        tenant_id=api_key.tenant_id,
        ip=ip,
        details={"changes": {"revoked_at": {"before": None, "after": api_key.revoked_at.isoformat()}}},
    )
    transaction.on_commit(key_cache_invalidate)
    return api_key


@transaction.atomic
def api_key_delete(*, api_key: ApiKey, actor: str, ip: str | None = None) -> None:
    before = snapshot(api_key, KEY_AUDIT_FIELDS)
    tenant_id, prefix = api_key.tenant_id, api_key.prefix
    api_key.delete()
    audit_record(
        actor=actor,
        action="api_key.delete",
        target=f"api_key:{prefix}",
        tenant_id=tenant_id,
        ip=ip,
        details={"before": before},
    )
    transaction.on_commit(key_cache_invalidate)


QUOTA_AUDIT_FIELDS = ("tenant", "api_key", "model", "budget_duration", *Quota.LIMIT_FIELDS)


def _quota_tenant_id(quota: Quota) -> int | None:
    return quota.tenant_id or (quota.api_key.tenant_id if quota.api_key is not None else None)


def _quota_snapshot(quota: Quota) -> dict[str, Any]:
    values = snapshot(quota, QUOTA_AUDIT_FIELDS)
    if values.get("max_budget") is not None:
        values["max_budget"] = str(values["max_budget"])
    return values


@transaction.atomic
def quota_save(*, quota: Quota, actor: str, ip: str | None = None) -> Quota:
    old = Quota.objects.filter(pk=quota.pk).first() if quota.pk else None
    before = _quota_snapshot(old) if old is not None else {}
    quota.full_clean()
    quota.save()
    audit_record(
        actor=actor,
        action="quota.change" if old is not None else "quota.create",
        target=f"quota:{quota.pk}:{quota}",
        tenant_id=_quota_tenant_id(quota),
        ip=ip,
        details={"changes": changes_between(before, _quota_snapshot(quota))},
    )
    transaction.on_commit(key_cache_invalidate)
    return quota


@transaction.atomic
def quota_delete(*, quota: Quota, actor: str, ip: str | None = None) -> None:
    before, target, tenant_id = _quota_snapshot(quota), f"quota:{quota.pk}:{quota}", _quota_tenant_id(quota)
    quota.delete()
    audit_record(
        actor=actor, action="quota.delete", target=target, tenant_id=tenant_id, ip=ip, details={"before": before}
    )
    transaction.on_commit(key_cache_invalidate)


MEMBERSHIP_AUDIT_FIELDS = ("user", "tenant", "role")


def _role_groups_refresh(user: Any) -> None:
    """Give the user exactly the groups of the roles they hold somewhere, and admin access if any."""
    from django.contrib.auth.models import Group

    roles = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    role_groups = Group.objects.filter(name__in=ROLE_LABELS.values())
    user.groups.remove(*[group for group in role_groups if group.name not in {ROLE_LABELS[r] for r in roles}])
    user.groups.add(*[group for group in role_groups if group.name in {ROLE_LABELS[r] for r in roles}])
    if roles and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])


@transaction.atomic
def membership_save(*, membership: Membership, actor: str, ip: str | None = None) -> Membership:
    before = _before(Membership, membership.pk, MEMBERSHIP_AUDIT_FIELDS)
    membership.full_clean()
    membership.save()
    _role_groups_refresh(membership.user)
    audit_record(
        actor=actor,
        action="membership.change" if before else "membership.create",
        target=f"membership:{membership.user}@{membership.tenant.slug}",
        tenant_id=membership.tenant_id,
        ip=ip,
        details={"changes": changes_between(before, snapshot(membership, MEMBERSHIP_AUDIT_FIELDS))},
    )
    return membership


@transaction.atomic
def membership_delete(*, membership: Membership, actor: str, ip: str | None = None) -> None:
    before = snapshot(membership, MEMBERSHIP_AUDIT_FIELDS)
    user, tenant_id, target = (
        membership.user,
        membership.tenant_id,
        f"membership:{membership.user}@{membership.tenant.slug}",
    )
    membership.delete()
    _role_groups_refresh(user)
    audit_record(
        actor=actor, action="membership.delete", target=target, tenant_id=tenant_id, ip=ip, details={"before": before}
    )
