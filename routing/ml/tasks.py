"""Celery tasks of ML routing (thin: they call services)."""

from __future__ import annotations

from celery import shared_task

from routing.ml.models import SmartGroup
from routing.ml.services import router_promote, router_train


@shared_task
def router_train_task(
    group_id: int, *, actor: str, kind: str | None = None, include_traffic: bool = True, promote: bool = False
) -> int:
    """Train a router for a smart group (optionally promote it); returns the artifact id."""
    group = SmartGroup.objects.get(pk=group_id)
    artifact = router_train(group=group, actor=actor, kind=kind, include_traffic=include_traffic)
    if promote:
        router_promote(artifact=artifact, actor=actor)
    return artifact.pk
