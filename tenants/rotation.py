"""Secret rotation: re-encrypting stored credentials with the newest key, and API keys past their maximum age."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.db.models.functions import Cast
from django.utils import timezone

from audit.services import audit_record
from core.changes import snapshot
from tenants.auth import key_cache_invalidate
from tenants.models import ApiKey, Quota
from tenants.roles import NotAllowed
from tenants.services import KEY_AUDIT_FIELDS, api_key_create, api_key_may, api_key_revoke
from tenants.vault import EncryptedTextField, token_is_current, token_rotate

logger = logging.getLogger(__name__)


def encrypted_fields() -> list[tuple[type[models.Model], EncryptedTextField]]:
    """Every EncryptedTextField of every installed model, so other apps' credentials are covered too."""
    found = []
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        for model_field in model._meta.concrete_fields:
            if isinstance(model_field, EncryptedTextField):
                found.append((model, model_field))
    return found


def _label(model: type[models.Model], model_field: models.Field) -> str:
    return f"{model._meta.label}.{model_field.name}"


def _ciphertexts(model: type[models.Model], model_field: models.Field, after: Any, limit: int) -> list[tuple[Any, str]]:
    # Cast to a plain text column so the ciphertext comes back as stored, not decrypted.
    raw = Cast(model_field.attname, output_field=models.TextField())
    rows = (model._default_manager.filter(pk__gt=after) if after is not None else model._default_manager.all()).exclude(
        **{f"{model_field.attname}__isnull": True}
    )
    return list(rows.order_by("pk").annotate(_raw=raw).values_list("pk", "_raw")[:limit])


def secrets_pending() -> dict[str, int]:
    """How many stored credentials per field are not yet under the first key (0 everywhere: old keys can go)."""
    pending: dict[str, int] = {}
    batch = settings.SECRET_ROTATION_BATCH
    for model, model_field in encrypted_fields():
        count, after = 0, None
        while rows := _ciphertexts(model, model_field, after, batch):
            count += sum(1 for _, token in rows if token and not token_is_current(token))
            after = rows[-1][0]
        pending[_label(model, model_field)] = count
    return pending


def secrets_reencrypt(*, actor: str, batch_size: int | None = None) -> dict[str, int]:
    """Re-encrypt every stored credential with the first key of FERNET_KEYS, batch by batch.

    Idempotent (values already under the first key are left alone) and safe alongside live
    traffic: readers decrypt with any key in the ring, and each row is swapped with a
    compare-and-set on its old ciphertext, so a concurrent edit is never overwritten.
    """
    batch_size = batch_size or settings.SECRET_ROTATION_BATCH
    rotated: dict[str, int] = {}
    for model, model_field in encrypted_fields():
        label, count, after = _label(model, model_field), 0, None
        while rows := _ciphertexts(model, model_field, after, batch_size):
            after = rows[-1][0]
            stale = [(pk, token) for pk, token in rows if token and not token_is_current(token)]
            if not stale:
                continue
            with transaction.atomic():
                for pk, token in stale:
                    swapped = (
                        model._default_manager.filter(pk=pk)
                        .annotate(_raw=Cast(model_field.attname, output_field=models.TextField()))
                        .filter(_raw=token)
                        .update(**{model_field.attname: models.Value(token_rotate(token), models.TextField())})
                    )
                    count += swapped
        rotated[label] = count
        if count:
            audit_record(
                actor=actor,
                action="secret.reencrypt",
                target=f"field:{label}",
                details={"rows": count, "key_ring_size": len(settings.FERNET_KEYS)},
            )
            logger.info("re-encrypted %d value(s) of %s with the first key", count, label)
    return rotated


def api_key_max_age(api_key: ApiKey) -> int | None:
    return api_key.max_age_days or api_key.tenant.key_max_age_days


def api_key_rotation_due_at(api_key: ApiKey) -> dt.datetime | None:
    """When an active key is due for rotation (None: no maximum age, or already rotated)."""
    max_age = api_key_max_age(api_key)
    if max_age is None or api_key.status != ApiKey.Status.ACTIVE or hasattr(api_key, "successor"):
        return None
    return api_key.created_at + dt.timedelta(days=max_age)


def api_keys_rotation_due(*, now: dt.datetime | None = None) -> models.QuerySet[ApiKey]:
    """Active keys older than their (or their tenant's) maximum age that have no successor yet."""
    now = now or timezone.now()
    candidates = (
        ApiKey.objects.usable()
        .filter(successor__isnull=True)
        .filter(models.Q(max_age_days__isnull=False) | models.Q(tenant__key_max_age_days__isnull=False))
        .select_related("tenant")
    )
    due = [key.pk for key in candidates if (at := api_key_rotation_due_at(key)) is not None and at <= now]
    return ApiKey.objects.filter(pk__in=due)


def api_keys_in_grace() -> models.QuerySet[ApiKey]:
    """Rotated keys that still work until their grace period ends."""
    return ApiKey.objects.filter(successor__isnull=False, revoked_at__isnull=True)


@dataclass
class KeyRotation:
    old: ApiKey
    new: ApiKey
    secret: str = field(repr=False)


@transaction.atomic
def api_key_rotate(
    *,
    api_key: ApiKey,
    actor: str,
    grace: dt.timedelta | None = None,
    hold_secret: bool = False,
    acting_user: Any = None,
    ip: str | None = None,
) -> KeyRotation | None:
    """A successor with the same tenant, name, models, scopes, owner and quotas; the old key expires after ``grace``.

    ``hold_secret`` keeps the new secret encrypted on the successor until a tenant admin
    (or the developer who owns the key) collects it once in the admin (for rotations nobody
    is watching, i.e. the scheduled job). Returns None if the key was rotated already or is
    not active (idempotent). ``acting_user`` (None: the system) must be allowed to change
    the key, and to grant its scopes: the successor is a new grant.
    """
    old = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    if not api_key_may(acting_user, old, "change"):
        raise NotAllowed("Your role may not rotate this key: developers may only rotate the keys they created.")
    if old.status != ApiKey.Status.ACTIVE or ApiKey.objects.filter(rotated_from=old).exists():
        return None
    grace = dt.timedelta(hours=settings.API_KEY_ROTATION_GRACE_HOURS) if grace is None else grace
    now = timezone.now()
    new, secret = api_key_create(
        tenant=old.tenant,
        name=old.name,
        actor=actor,
        allowed_models=list(old.allowed_models),
        scopes=list(old.scopes),
        expires_at=old.expires_at if old.expires_at and old.expires_at > now + grace else None,
        max_age_days=old.max_age_days,
        created_by=old.created_by,
        acting_user=acting_user,
        ip=ip,
    )
    new.rotated_from = old
    new.pending_secret = secret if hold_secret else ""
    new.save(update_fields=["rotated_from", "pending_secret"])
    for quota in Quota.objects.filter(api_key=old):
        quota.pk = None
        quota.api_key = new
        quota.save()
    before = snapshot(old, KEY_AUDIT_FIELDS)
    grace_ends = now + grace
    if old.expires_at is None or old.expires_at > grace_ends:
        old.expires_at = grace_ends
        old.save(update_fields=["expires_at"])
    audit_record(
        actor=actor,
        action="api_key.rotate",
        target=f"api_key:{old.prefix}",
        tenant_id=old.tenant_id,
        ip=ip,
        details={
            "successor": new.prefix,
            "grace_ends": old.expires_at.isoformat() if old.expires_at else None,
            "secret_delivery": "held for pickup in the admin" if hold_secret else "shown once to the actor",
            "changes": {"expires_at": {"before": before["expires_at"], "after": snapshot(old, ["expires_at"])}},
        },
    )
    # The successor announced itself (api_key_create); the old key's expiry moved.
    transaction.on_commit(partial(key_cache_invalidate, secret_hashes=[old.secret_hash]))
    return KeyRotation(old=old, new=new, secret=secret)


def api_keys_retire(*, actor: str, now: dt.datetime | None = None) -> int:
    """Revoke rotated keys whose grace period is over."""
    now = now or timezone.now()
    retired = 0
    for old in api_keys_in_grace().filter(expires_at__lte=now):
        api_key_revoke(api_key=old, actor=actor)
        retired += 1
    return retired


@transaction.atomic
def api_key_secret_collect(
    *, api_key: ApiKey, actor: str, acting_user: Any = None, ip: str | None = None
) -> str | None:
    """Hand out a held secret once: it is erased as it is read, and the pickup is audited.

    Only who may change the key (a tenant admin of its tenant, or the developer who owns it) takes it.
    """
    key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if not api_key_may(acting_user, key, "change"):
        raise NotAllowed("Your role may not collect this key's secret: only its owner or a tenant admin may.")
    secret = key.pending_secret
    if not secret:
        return None
    key.pending_secret = ""
    key.save(update_fields=["pending_secret"])
    audit_record(
        actor=actor, action="api_key.secret_collect", target=f"api_key:{key.prefix}", tenant_id=key.tenant_id, ip=ip
    )
    return secret


@dataclass
class RotationReport:
    reencrypted: dict[str, int]
    rotated: list[str]
    retired: int
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"re-encrypted {sum(self.reencrypted.values())} credential(s), rotated {len(self.rotated)} API key(s), "
            f"revoked {self.retired} key(s) past their grace period"
            + (f"; failed: {', '.join(self.failed)}" if self.failed else "")
        )


def secret_rotate(*, actor: str) -> RotationReport:
    """The whole rotation pass (the scheduled job, the admin button and ``manage.py secret_rotate``)."""
    reencrypted = secrets_reencrypt(actor=actor)
    rotated, failed = [], []
    for api_key in api_keys_rotation_due():
        try:
            result = api_key_rotate(api_key=api_key, actor=actor, hold_secret=True)
        except Exception:
            logger.exception("rotating API key %s failed", api_key.prefix)
            failed.append(api_key.prefix)
            continue
        if result is not None:
            rotated.append(result.old.prefix)
    return RotationReport(reencrypted, rotated, api_keys_retire(actor=actor), failed)
