"""State changes for ML routing: groups, training, promotion, rollback, shadow, A/B, feedback.

Each writes its audit event in the same transaction and, on commit, bumps the shared
epoch so every process reloads its smart-group cache.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.services import audit_record
from core.changes import AuditedEntity
from routing.ml.evaluation import router_evaluate
from routing.ml.models import (
    RequestFeedback,
    RouterArtifact,
    SmartGroup,
    SmartGroupTenantShare,
    TenantRoutingData,
)
from routing.ml.routers import LEARNED_KINDS, calibration_quantiles, router_fit
from routing.ml.selectors import smart_cache
from routing.ml.training import training_set
from routing.models import RequestLog

GROUP_AUDIT_FIELDS = (
    "name",
    "strong_model",
    "weak_model",
    "strong_price",
    "weak_price",
    "router_kind",
    "strong_share",
    "rules",
    "mode",
    "enabled",
)


def _changed() -> None:
    smart_cache.clear()
    smart_cache.epoch.bump()


SMART_GROUPS = AuditedEntity[SmartGroup](
    "smart_group", GROUP_AUDIT_FIELDS, lambda group: f"smart_group:{group.pk}:{group.name}", on_commit=_changed
)


def smart_group_save(*, group: SmartGroup, actor: str, ip: str | None = None) -> SmartGroup:
    return SMART_GROUPS.save(group, actor=actor, ip=ip)


def smart_group_delete(*, group: SmartGroup, actor: str, ip: str | None = None) -> None:
    SMART_GROUPS.delete(group, actor=actor, ip=ip)


def _setting_record(
    action: str, target: str, tenant_id: int, name: str, before: Any, after: Any, actor: str, ip: str | None
) -> None:
    """Audit a tenant's routing setting as set (even to what it was), and reload the groups on commit."""
    changes = {name: {"before": before, "after": after}}
    audit_record(actor=actor, action=action, target=target, tenant_id=tenant_id, ip=ip, details={"changes": changes})
    transaction.on_commit(_changed)


@transaction.atomic
def tenant_share_save(
    *, group: SmartGroup, tenant_id: int, strong_share: float | None, actor: str, ip: str | None = None
) -> None:
    """Set (or with None, remove) a tenant's target share of strong-model calls for a group."""
    row = SmartGroupTenantShare.objects.filter(group=group, tenant_id=tenant_id).first()
    before = row.strong_share if row else None
    if strong_share is None:
        if row:
            row.delete()
    else:
        row = row or SmartGroupTenantShare(group=group, tenant_id=tenant_id)
        row.strong_share = strong_share
        row.full_clean()
        row.save()
    target = f"smart_group:{group.pk}:{group.name}"
    _setting_record("smart_group.tenant_share", target, tenant_id, "strong_share", before, strong_share, actor, ip)


@transaction.atomic
def tenant_routing_data_save(*, tenant_id: int, keep_prompt_text: bool, actor: str, ip: str | None = None) -> None:
    """Opt a tenant in to (or out of) keeping prompt text of smart-routed requests for training."""
    row, _ = TenantRoutingData.objects.get_or_create(tenant_id=tenant_id)
    before = row.keep_prompt_text
    row.keep_prompt_text = keep_prompt_text
    row.save()
    target = f"tenant:{tenant_id}"
    _setting_record("routing_data.consent", target, tenant_id, "keep_prompt_text", before, keep_prompt_text, actor, ip)


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def router_train(
    *,
    group: SmartGroup,
    actor: str,
    kind: str | None = None,
    backend: str = "hashing",
    include_synthetic: bool = True,
    include_traffic: bool = True,
    k: int = 25,
) -> RouterArtifact:
    """Train a router for ``group`` on the synthetic table and/or its traffic, evaluate it, store a candidate."""
    kind = kind or group.router_kind
    if kind not in LEARNED_KINDS:
        raise ValueError(f"router kind {kind!r} is not trained; expected one of {', '.join(LEARNED_KINDS)}")
    started = time.perf_counter()
    data = training_set(group, include_synthetic=include_synthetic, include_traffic=include_traffic)
    train, held = data.split()
    if len(held.texts) < 20:
        held = train  # too little data to hold any out: report in-sample numbers (flagged in metrics)
    router = router_fit(kind=kind, texts=train.texts, labels=train.labels, weights=train.weights, backend=backend, k=k)
    scores = router.scores(held.texts)
    metrics = router_evaluate(scores, held.quality_strong, held.quality_weak, held.cost_strong, held.cost_weak)
    metrics["in_sample"] = held is train
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    blob = router.to_bytes()
    with transaction.atomic():
        group = SmartGroup.objects.select_for_update().get(pk=group.pk)
        version = (group.artifacts.aggregate(top=Max("version"))["top"] or 0) + 1
        artifact = RouterArtifact.objects.create(
            group=group,
            version=version,
            kind=kind,
            backend=backend,
            params=router.params,
            blob=blob,
            sha256=_sha256(blob),
            calibration=calibration_quantiles(np.asarray(scores)),
            metrics=metrics,
            trained_rows=len(train.texts),
            traffic_rows=data.traffic_rows,
            created_by=actor,
        )
        audit_record(
            actor=actor,
            action="router.train",
            target=f"router:{group.name}:{artifact.label}",
            details={
                "sha256": artifact.sha256,
                "rows": len(train.texts),
                "traffic_rows": data.traffic_rows,
                "apgr": metrics["apgr"],
            },
        )
    return artifact


def _retire(artifact: RouterArtifact | None, *, keep: RouterArtifact | None = None) -> None:
    if artifact is not None and artifact != keep:
        artifact.status = RouterArtifact.Status.RETIRED
        artifact.save(update_fields=["status"])


def _audit_artifact(action: str, artifact: RouterArtifact | None, group: SmartGroup, actor: str, **details: Any):
    audit_record(
        actor=actor,
        action=action,
        target=f"router:{group.name}:{artifact.label if artifact else '-'}",
        details={"sha256": artifact.sha256 if artifact else None, **details},
    )


@transaction.atomic
def router_promote(*, artifact: RouterArtifact, actor: str) -> RouterArtifact:
    """Make ``artifact`` the group's active router; the previous one is kept for rollback."""
    group = SmartGroup.objects.select_for_update().get(pk=artifact.group_id)
    previous = group.active_artifact
    _retire(previous, keep=artifact)
    for slot in ("shadow_artifact", "ab_artifact"):
        if getattr(group, f"{slot}_id") == artifact.pk:
            setattr(group, slot, None)
    group.active_artifact = artifact
    group.router_kind = artifact.kind
    if group.ab_artifact_id is None:
        group.ab_percent = 0
    group.save()
    artifact.status = RouterArtifact.Status.ACTIVE
    artifact.promoted_at = timezone.now()
    artifact.save(update_fields=["status", "promoted_at"])
    _audit_artifact("router.promote", artifact, group, actor, previous=previous.label if previous else None)
    transaction.on_commit(_changed)
    return artifact


@transaction.atomic
def router_rollback(*, group: SmartGroup, actor: str) -> RouterArtifact:
    """Go back to the artifact that was active before the current one."""
    group = SmartGroup.objects.select_for_update().get(pk=group.pk)
    current = group.active_artifact
    earlier = group.artifacts.filter(promoted_at__isnull=False)
    if current is not None:
        earlier = earlier.exclude(pk=current.pk).filter(promoted_at__lt=current.promoted_at)
    previous = earlier.order_by("-promoted_at").first()
    if previous is None:
        raise ValueError(f"smart group {group.name} has no earlier promoted router to roll back to")
    _retire(current)
    group.active_artifact = previous
    group.router_kind = previous.kind
    group.save()
    previous.status = RouterArtifact.Status.ACTIVE
    previous.save(update_fields=["status"])
    _audit_artifact("router.rollback", previous, group, actor, rolled_back=current.label if current else None)
    transaction.on_commit(_changed)
    return previous


@transaction.atomic
def router_shadow_set(*, group: SmartGroup, artifact: RouterArtifact | None, actor: str) -> None:
    """Run ``artifact`` in shadow next to the active router (None stops shadowing)."""
    group = SmartGroup.objects.select_for_update().get(pk=group.pk)
    if artifact is not None and artifact.group_id != group.pk:
        raise ValueError("the artifact belongs to another smart group")
    previous = group.shadow_artifact
    if previous is not None and previous != artifact and previous != group.active_artifact:
        _retire(previous)
    group.shadow_artifact = artifact
    group.save()
    if artifact is not None:
        artifact.status = RouterArtifact.Status.SHADOW
        artifact.save(update_fields=["status"])
    _audit_artifact("router.shadow", artifact, group, actor, previous=previous.label if previous else None)
    transaction.on_commit(_changed)


@transaction.atomic
def router_ab_set(*, group: SmartGroup, artifact: RouterArtifact | None, percent: int, actor: str) -> None:
    """Serve ``percent`` % of requests with ``artifact`` (arm B) and the rest with the active router (arm A)."""
    if not 0 <= percent <= 100:
        raise ValueError("the A/B percentage must be between 0 and 100")
    group = SmartGroup.objects.select_for_update().get(pk=group.pk)
    if artifact is not None and artifact.group_id != group.pk:
        raise ValueError("the artifact belongs to another smart group")
    previous = (group.ab_artifact, group.ab_percent)
    if previous[0] is not None and previous[0] != artifact and previous[0] != group.active_artifact:
        _retire(previous[0])
    group.ab_artifact = artifact
    group.ab_percent = percent if artifact is not None else 0
    group.save()
    if artifact is not None:
        artifact.status = RouterArtifact.Status.AB
        artifact.save(update_fields=["status"])
    _audit_artifact(
        "router.ab",
        artifact,
        group,
        actor,
        percent=group.ab_percent,
        previous={"artifact": previous[0].label if previous[0] else None, "percent": previous[1]},
    )
    transaction.on_commit(_changed)


class FeedbackTargetMissing(LookupError):
    """No request with that id is visible to the caller (yet)."""


@transaction.atomic
def feedback_record(
    *,
    request_id: str,
    score: float,
    actor: str,
    source: str,
    api_key_id: int | None = None,
    tenant_ids: set[int] | None = None,
    comment: str = "",
    ip: str | None = None,
) -> RequestFeedback:
    """Record (or replace) the quality score of a request's answer.

    Through the API only the key that made the request may score it (``api_key_id``);
    in the admin, ``tenant_ids`` limits it to the operator's tenants (None: any).
    """
    logs = RequestLog.objects.filter(request_id=request_id)
    if api_key_id is not None:
        logs = logs.filter(api_key_id=api_key_id)
    if tenant_ids is not None:
        logs = logs.filter(tenant_id__in=tenant_ids)
    log = logs.first()
    if log is None:
        raise FeedbackTargetMissing(request_id)
    feedback = RequestFeedback.objects.filter(request_id=request_id).first()
    before = feedback.score if feedback else None
    feedback = feedback or RequestFeedback(request_id=request_id)
    feedback.tenant_id = log.tenant_id
    feedback.api_key_id = log.api_key_id
    feedback.model_requested = log.model_requested
    feedback.model_served = log.model_served
    feedback.score = score
    feedback.comment = comment
    feedback.source = source
    feedback.actor = actor
    feedback.full_clean()
    feedback.save()
    audit_record(
        actor=actor,
        action="request.feedback",
        target=f"request:{request_id}",
        tenant_id=log.tenant_id,
        ip=ip,
        details={"changes": {"score": {"before": before, "after": score}}, "source": source},
    )
    return feedback
