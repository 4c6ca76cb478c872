"""State changes to model deployments; each writes its audit event in the same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.changes import AuditedEntity, snapshot
from routing.credentials import params_merge, params_split, secret_values
from routing.models import ModelDeployment, RequestLog, RouteGroup, url_credentials, url_without_credentials
from routing.selectors import deployment_cache

DEPLOYMENT_AUDIT_FIELDS = ("model_name", "litellm_model", "api_base", "extra_params", "enabled")


def _separated(deployment: ModelDeployment) -> tuple[dict[str, Any], dict[str, Any]]:
    """A deployment's plain params and its credentials, counting any credential still in ``extra_params``
    (a row written around this module) as a credential."""
    plain, leaked = params_split(deployment.extra_params if isinstance(deployment.extra_params, dict) else {})
    return plain, params_merge(deployment.secret_params or {}, leaked)


def _deployment_snapshot(deployment: ModelDeployment) -> dict[str, Any]:
    values = snapshot(deployment, DEPLOYMENT_AUDIT_FIELDS)
    # Credentials never enter the audit trail: only whether the key is set and which secret params are.
    values["extra_params"], secret = _separated(deployment)
    if url_credentials(deployment.api_base):
        # Only a row written before api_base was checked (or around this module) can hold one.
        values["api_base"] = f"{url_without_credentials(deployment.api_base)} (credential removed)"
    values["api_key_set"] = bool(deployment.api_key)
    values["secret_params"] = sorted(secret_values(secret))
    return values


def _credentials(deployment: ModelDeployment) -> dict[str, Any]:
    values = {f"secret_params.{name}": value for name, value in secret_values(_separated(deployment)[1]).items()}
    if deployment.api_key:
        values["api_key"] = deployment.api_key
    return values


def _secret_changes(old: ModelDeployment | None, new: ModelDeployment) -> dict[str, dict[str, str]]:
    """Which credentials were set, changed or removed, by name: "(set)", "(changed)", "(removed)", never values."""
    before = _credentials(old) if old is not None else {}
    after = _credentials(new)
    changes = {}
    for name in sorted(set(before) | set(after)):
        if name not in after:
            changes[name] = {"before": "(set)", "after": "(removed)"}
        elif name not in before:
            changes[name] = {"before": "(empty)", "after": "(set)"}
        elif before[name] != after[name]:
            changes[name] = {"before": "(set)", "after": "(changed)"}
    return changes


def _credentials_separate(deployment: ModelDeployment) -> None:
    """Move credential-like params out of ``extra_params`` into the encrypted ``secret_params``.

    Whatever the caller put where, no credential is stored or audited in plain text.
    """
    if isinstance(deployment.extra_params, dict):
        deployment.extra_params, deployment.secret_params = _separated(deployment)


def _deployments_changed() -> None:
    deployment_cache.clear()
    deployment_cache.epoch.bump()


DEPLOYMENTS = AuditedEntity[ModelDeployment](
    "deployment", _deployment_snapshot, lambda d: f"deployment:{d.pk}:{d.model_name}", on_commit=_deployments_changed
)


def deployment_save(*, deployment: ModelDeployment, actor: str, ip: str | None = None) -> ModelDeployment:
    """Create or change a deployment; credentials found in ``extra_params`` are moved to ``secret_params``.

    The audit event names the credentials that were set, changed or removed, never their values.
    """
    with DEPLOYMENTS.saving(deployment, actor=actor, ip=ip) as change:
        _credentials_separate(deployment)
        deployment.full_clean()
        change.extra_changes = _secret_changes(change.stored, deployment)
        change.save()
    return deployment


def deployment_delete(*, deployment: ModelDeployment, actor: str, ip: str | None = None) -> None:
    DEPLOYMENTS.delete(deployment, actor=actor, ip=ip)


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

ROUTE_GROUPS = AuditedEntity[RouteGroup](
    "route_group",
    ROUTE_GROUP_AUDIT_FIELDS,
    lambda g: f"route_group:{g.pk}:{g.model_name}",
    on_commit=_deployments_changed,
)


def route_group_save(*, group: RouteGroup, actor: str, ip: str | None = None) -> RouteGroup:
    """Create or change a route group; its version moves so decisions name the policy they used."""
    with ROUTE_GROUPS.saving(group, actor=actor, ip=ip) as change:
        group.full_clean(exclude=["version"])
        if change.unchanged:
            return group
        group.version = change.stored.version + 1 if change.stored is not None else 1
        change.details["version"] = group.version
        change.save()
    return group


def route_group_delete(*, group: RouteGroup, actor: str, ip: str | None = None) -> None:
    ROUTE_GROUPS.delete(group, actor=actor, ip=ip)


def request_logs_prune(*, older_than: dt.datetime, batch: int = 10_000) -> int:
    """Delete raw request logs older than ``older_than`` in batches (rollups keep the history)."""
    deleted = 0
    while True:
        ids = list(RequestLog.objects.filter(created_at__lt=older_than).values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += RequestLog.objects.filter(pk__in=ids).delete()[0]
