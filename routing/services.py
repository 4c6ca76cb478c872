"""State changes to model deployments; each writes its audit event in the same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction

from audit.services import audit_record, changes_between
from routing.models import ModelDeployment, RequestLog
from routing.selectors import deployment_cache
from tenants.services import snapshot

DEPLOYMENT_AUDIT_FIELDS = ("model_name", "litellm_model", "api_base", "extra_params", "enabled")


def _deployment_snapshot(deployment: ModelDeployment) -> dict[str, Any]:
    values = snapshot(deployment, DEPLOYMENT_AUDIT_FIELDS)
    # The credential itself never enters the audit trail; only whether it is set.
    values["api_key_set"] = bool(deployment.api_key)
    return values


def _deployments_changed() -> None:
    deployment_cache.clear()
    deployment_cache.epoch.bump()


@transaction.atomic
def deployment_save(
    *, deployment: ModelDeployment, actor: str, ip: str | None = None, api_key_changed: bool = False
) -> ModelDeployment:
    old = ModelDeployment.objects.filter(pk=deployment.pk).first() if deployment.pk else None
    before = _deployment_snapshot(old) if old is not None else {}
    deployment.full_clean()
    deployment.save()
    after = _deployment_snapshot(deployment)
    changes = changes_between(before, after)
    if api_key_changed and old is not None:
        changes["api_key"] = {"before": "(set)" if old.api_key else "(empty)", "after": "(changed)"}
    audit_record(
        actor=actor,
        action="deployment.change" if old is not None else "deployment.create",
        target=f"deployment:{deployment.pk}:{deployment.model_name}",
        ip=ip,
        details={"changes": changes},
    )
    transaction.on_commit(_deployments_changed)
    return deployment


@transaction.atomic
def deployment_delete(*, deployment: ModelDeployment, actor: str, ip: str | None = None) -> None:
    before = _deployment_snapshot(deployment)
    target = f"deployment:{deployment.pk}:{deployment.model_name}"
    deployment.delete()
    audit_record(actor=actor, action="deployment.delete", target=target, ip=ip, details={"before": before})
    transaction.on_commit(_deployments_changed)


def request_logs_prune(*, older_than: dt.datetime, batch: int = 10_000) -> int:
    """Delete raw request logs older than ``older_than`` in batches (rollups keep the history)."""
    deleted = 0
    while True:
        ids = list(RequestLog.objects.filter(created_at__lt=older_than).values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += RequestLog.objects.filter(pk__in=ids).delete()[0]
