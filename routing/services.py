"""State changes to model deployments; each writes its audit event in the same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction

from audit.services import audit_record, changes_between
from routing.models import ModelDeployment, RequestLog, RouteGroup
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


ROUTE_GROUP_AUDIT_FIELDS = (
    "model_name",
    "routing_strategy",
    "num_retries",
    "retry_after",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "allowed_fails",
    "fail_window",
    "cooldown_time",
)


@transaction.atomic
def route_group_save(*, group: RouteGroup, actor: str, ip: str | None = None) -> RouteGroup:
    """Create or change a route group; its version moves so decisions name the policy they used."""
    old = RouteGroup.objects.select_for_update().filter(pk=group.pk).first() if group.pk else None
    before = snapshot(old, ROUTE_GROUP_AUDIT_FIELDS) if old is not None else {}
    group.full_clean(exclude=["version"])
    after = snapshot(group, ROUTE_GROUP_AUDIT_FIELDS)
    changes = changes_between(before, after)
    if old is not None and not changes:
        return group
    group.version = old.version + 1 if old is not None else 1
    group.save()
    audit_record(
        actor=actor,
        action="route_group.change" if old is not None else "route_group.create",
        target=f"route_group:{group.pk}:{group.model_name}",
        ip=ip,
        details={"changes": changes, "version": group.version},
    )
    transaction.on_commit(_deployments_changed)
    return group


@transaction.atomic
def route_group_delete(*, group: RouteGroup, actor: str, ip: str | None = None) -> None:
    before = snapshot(group, ROUTE_GROUP_AUDIT_FIELDS)
    target = f"route_group:{group.pk}:{group.model_name}"
    group.delete()
    audit_record(actor=actor, action="route_group.delete", target=target, ip=ip, details={"before": before})
    transaction.on_commit(_deployments_changed)


def request_logs_prune(*, older_than: dt.datetime, batch: int = 10_000) -> int:
    """Delete raw request logs older than ``older_than`` in batches (rollups keep the history)."""
    deleted = 0
    while True:
        ids = list(RequestLog.objects.filter(created_at__lt=older_than).values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += RequestLog.objects.filter(pk__in=ids).delete()[0]
