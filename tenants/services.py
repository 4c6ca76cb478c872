"""State changes to tenants and API keys; each writes its audit event in the same transaction.

``acting_user`` is the person making the change, whose roles bound it (tenants.roles);
None is the system (config-as-code, the scheduler, management commands), which acts as a
platform admin. A refusal raises ``tenants.roles.NotAllowed`` before anything is written.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.changes import AuditedEntity, M, snapshot
from tenants.auth import key_cache_invalidate
from tenants.models import KEY_SCOPES, ApiKey, Membership, Quota, Tenant, key_generate
from tenants.roles import ROLE_LABELS, NotAllowed, is_platform_admin, may, scopes_grantable

TENANT_AUDIT_FIELDS = ("slug", "name", "is_active", "key_max_age_days", "trace_content")
KEY_AUDIT_FIELDS = ("name", "tenant", "prefix", "allowed_models", "scopes", "expires_at", "revoked_at", "max_age_days")


def _tenant_may(acting_user: Any, action: str, tenant_id: int | None) -> None:
    if not may(acting_user, Tenant, action, tenant_id=tenant_id):
        raise NotAllowed(f"Your role may not {action} this tenant; platform admins do.")


TENANTS = AuditedEntity[Tenant](
    "tenant",
    TENANT_AUDIT_FIELDS,
    lambda t: f"tenant:{t.slug}",
    tenant_id=lambda t: t.pk,
    # Its own events under every slug it had (a slug can change; the tenant id does not).
    history=lambda t: {"tenant_id": str(t.pk), "action__startswith": "tenant."},
)


def tenant_save(*, tenant: Tenant, actor: str, acting_user: Any = None, ip: str | None = None) -> Tenant:
    _tenant_may(acting_user, "change" if tenant.pk else "add", tenant.pk)
    with TENANTS.saving(tenant, actor=actor, ip=ip) as change:
        tenant.full_clean()
        # Read on the hot path through the key cache (the slug names the tenant in quota messages and metrics).
        if change.stored is not None and {"is_active", "trace_content", "slug"} & change.changes().keys():
            change.on_commit(partial(key_cache_invalidate, tenant_ids=[tenant.pk]))
        change.save()
    return tenant


def tenant_delete(*, tenant: Tenant, actor: str, acting_user: Any = None, ip: str | None = None) -> None:
    _tenant_may(acting_user, "delete", tenant.pk)
    TENANTS.delete(tenant, actor=actor, ip=ip, on_commit=partial(key_cache_invalidate, tenant_ids=[tenant.pk]))


def api_key_scopes_refused(*, acting_user: Any, tenant_id: int | None, scopes: Any, before: Any = ()) -> list[str]:
    """The scopes of ``scopes`` (those not already in ``before``) that ``acting_user`` may not give a key of the tenant.

    A scope that reads tenant data (the audit trail) needs the right to see that data; a
    key must not be a way around the role.
    """
    wanted = set(scopes or ()) if isinstance(scopes, list | tuple | set | frozenset) else set()
    # Unknown names are left to the model's validation, which says what the scopes are.
    added = (wanted & set(KEY_SCOPES)) - set(before or ())
    return sorted(added - set(scopes_grantable(acting_user, tenant_id)))


def _scopes_check(acting_user: Any, tenant_id: int | None, scopes: Any, before: Any = ()) -> None:
    refused = api_key_scopes_refused(acting_user=acting_user, tenant_id=tenant_id, scopes=scopes, before=before)
    if refused:
        raise NotAllowed(
            f"Your role may not give a key the scope(s) {', '.join(refused)}: a key may only read what its "
            "maker may see. Ask a tenant admin.",
            code="scope_not_grantable",
            param="scopes",
        )


def api_key_may(acting_user: Any, api_key: ApiKey, action: str) -> bool:
    """May ``acting_user`` ``action`` ("change": edit, revoke, rotate, collect; "delete") this stored key?

    Tenant admins act on every key of their tenants; developers only on the keys they created.
    """
    return may(acting_user, ApiKey, action, tenant_id=api_key.tenant_id, created_by_id=api_key.created_by_id)


def _stored(instance: M) -> M | None:
    return type(instance)._default_manager.filter(pk=instance.pk).first() if instance.pk else None


def _stored_key_check(acting_user: Any, stored: ApiKey | None, action: str, what: str) -> None:
    """Refuses unless ``acting_user`` may act on the key as stored (not as edited)."""
    if stored is not None and not api_key_may(acting_user, stored, action):
        who = "tenant admins do" if action == "delete" else f"developers may only {what} the keys they created"
        raise NotAllowed(f"Your role may not {what} this key: {who}.")


API_KEYS = AuditedEntity[ApiKey](
    "api_key", KEY_AUDIT_FIELDS, lambda key: f"api_key:{key.prefix}", tenant_id=lambda key: key.tenant_id
)


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
    acting_user: Any = None,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext secret, which is never stored.

    ``created_by`` owns the key (a developer manages the keys they created); ``acting_user``
    is who grants it now, bound by their role (a rotation keeps the owner, not the rotator).
    """
    if not may(acting_user, ApiKey, "add", tenant_id=tenant.pk):
        raise NotAllowed("Your role may not create keys in this tenant.")
    _scopes_check(acting_user, tenant.pk, scopes)
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
    API_KEYS.record(api_key, "create", actor=actor, ip=ip, details={"after": API_KEYS.values(api_key)})
    # Its secret may be cached as unknown (someone tried it first, or config-as-code named it).
    transaction.on_commit(partial(key_cache_invalidate, secret_hashes=[api_key.secret_hash]))
    return api_key, secret


def api_key_update(*, api_key: ApiKey, actor: str, acting_user: Any = None, ip: str | None = None) -> ApiKey:
    with API_KEYS.saving(api_key, actor=actor, ip=ip) as change:
        _stored_key_check(acting_user, change.stored, "change", "change")
        if change.stored is not None:
            if change.stored.tenant_id != api_key.tenant_id:
                # That would hand one tenant's secret to another.
                raise NotAllowed("A key never moves to another tenant; create a key there instead.", param="tenant")
            _scopes_check(acting_user, change.stored.tenant_id, api_key.scopes, before=change.stored.scopes)
        api_key.full_clean()
        change.on_commit(partial(key_cache_invalidate, secret_hashes=[api_key.secret_hash]))
        change.save()
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: str, acting_user: Any = None, ip: str | None = None) -> ApiKey:
    _stored_key_check(acting_user, _stored(api_key), "change", "revoke")
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    changes = {"revoked_at": {"before": None, "after": api_key.revoked_at.isoformat()}}
    API_KEYS.record(api_key, "revoke", actor=actor, ip=ip, details={"changes": changes})
    transaction.on_commit(partial(key_cache_invalidate, secret_hashes=[api_key.secret_hash]))
    return api_key


def api_key_delete(*, api_key: ApiKey, actor: str, acting_user: Any = None, ip: str | None = None) -> None:
    _stored_key_check(acting_user, _stored(api_key), "delete", "delete")
    invalidate = partial(key_cache_invalidate, secret_hashes=[api_key.secret_hash])
    API_KEYS.delete(api_key, actor=actor, ip=ip, on_commit=invalidate)


QUOTA_AUDIT_FIELDS = ("tenant", "api_key", "model", "budget_duration", *Quota.LIMIT_FIELDS)


def _quota_tenant_id(quota: Quota) -> int | None:
    return quota.tenant_id or (quota.api_key.tenant_id if quota.api_key is not None else None)


def _quota_snapshot(quota: Quota) -> dict[str, Any]:
    values = snapshot(quota, QUOTA_AUDIT_FIELDS)
    if values.get("max_budget") is not None:
        values["max_budget"] = str(values["max_budget"])
    return values


def _quota_check(acting_user: Any, quota: Quota, action: str) -> None:
    """A tenant's own quotas are set by platform admins; a key's by whoever may change quotas in its tenant.

    Developers never set limits: the keys they make are bound by their tenant's quotas.
    """
    if is_platform_admin(acting_user):
        return
    if quota.tenant_id is not None or not may(acting_user, Quota, action, tenant_id=_quota_tenant_id(quota)):
        raise NotAllowed(
            "Your role may not set this quota: tenant admins set their keys' limits, platform admins the tenant's."
        )


def _quota_keys_invalidate(*quotas: Quota | None) -> None:
    """On commit, drop the cached keys the quotas bind, as stored and as saved: one key's, or its tenant's."""
    key_ids = {quota.api_key_id for quota in quotas if quota is not None and quota.api_key_id}
    tenant_ids = {quota.tenant_id for quota in quotas if quota is not None and quota.tenant_id}
    secret_hashes = list(ApiKey.objects.filter(pk__in=key_ids).values_list("secret_hash", flat=True))
    transaction.on_commit(partial(key_cache_invalidate, secret_hashes=secret_hashes, tenant_ids=sorted(tenant_ids)))


QUOTAS = AuditedEntity[Quota]("quota", _quota_snapshot, lambda quota: f"quota:{quota.pk}:{quota}", _quota_tenant_id)


def quota_save(*, quota: Quota, actor: str, acting_user: Any = None, ip: str | None = None) -> Quota:
    with QUOTAS.saving(quota, actor=actor, ip=ip) as change:
        if change.stored is not None:
            _quota_check(acting_user, change.stored, "change")
        _quota_check(acting_user, quota, "change" if change.stored is not None else "add")
        quota.full_clean()
        _quota_keys_invalidate(change.stored, quota)
        change.save()
    return quota


@transaction.atomic
def quota_delete(*, quota: Quota, actor: str, acting_user: Any = None, ip: str | None = None) -> None:
    stored = _stored(quota)
    _quota_check(acting_user, stored or quota, "delete")
    _quota_keys_invalidate(stored, quota)
    QUOTAS.delete(quota, actor=actor, ip=ip)


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
    user.__dict__.pop("_tenant_role_cache", None)


def _membership_check(acting_user: Any, membership: Membership, action: str) -> None:
    if not may(acting_user, Membership, action, tenant_id=membership.tenant_id):
        raise NotAllowed("Your role may not manage members of this tenant.")


MEMBERSHIPS = AuditedEntity[Membership](
    "membership", MEMBERSHIP_AUDIT_FIELDS, lambda m: f"membership:{m.user}@{m.tenant.slug}", lambda m: m.tenant_id
)


def membership_save(
    *, membership: Membership, actor: str, acting_user: Any = None, ip: str | None = None
) -> Membership:
    with MEMBERSHIPS.saving(membership, actor=actor, ip=ip) as change:
        if change.stored is not None:
            _membership_check(acting_user, change.stored, "change")
            if change.stored.user_id != membership.user_id and not is_platform_admin(acting_user):
                # Handing a role to someone else is a new membership, made by name and audited as one.
                raise NotAllowed("A membership keeps its user; add the other person instead.", param="user")
        _membership_check(acting_user, membership, "change" if change.stored is not None else "add")
        membership.full_clean()
        change.save()
        _role_groups_refresh(membership.user)
    return membership


@transaction.atomic
def membership_delete(*, membership: Membership, actor: str, acting_user: Any = None, ip: str | None = None) -> None:
    _membership_check(acting_user, _stored(membership) or membership, "delete")
    user = membership.user
    MEMBERSHIPS.delete(membership, actor=actor, ip=ip)
    _role_groups_refresh(user)
