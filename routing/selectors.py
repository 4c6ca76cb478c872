"""Reads for the hot path: which deployments serve a model, from an in-process cache."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from routing.models import OPENAI_DEFAULT_API_BASE, ModelDeployment
from tenants.epoch import SharedEpoch
from tenants.errors import ServiceUnavailable


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    """A deployment as the hot path uses it: plain values, the credential already decrypted."""

    id: int
    model_name: str
    litellm_model: str
    provider: str
    upstream_model: str
    api_base: str
    api_key: str
    passthrough: bool
    created: int
    extra_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, deployment: ModelDeployment) -> DeploymentTarget:
        api_base = deployment.api_base or (OPENAI_DEFAULT_API_BASE if deployment.provider == "openai" else "")
        return cls(
            id=deployment.pk,
            model_name=deployment.model_name,
            litellm_model=deployment.litellm_model,
            provider=deployment.provider,
            upstream_model=deployment.upstream_model,
            api_base=api_base.rstrip("/"),
            api_key=deployment.api_key or "",
            passthrough=deployment.is_passthrough,
            created=int(deployment.created_at.timestamp()),
            extra_params=dict(deployment.extra_params or {}),
        )


class DeploymentCache:
    """All enabled deployments, grouped by public model name, refreshed every few seconds
    or as soon as the shared epoch says an admin changed one."""

    def __init__(self) -> None:
        self._groups: dict[str, list[DeploymentTarget]] = {}
        self._loaded_at = float("-inf")
        self.epoch = SharedEpoch("deployment")

    def clear(self) -> None:
        self._loaded_at = float("-inf")

    async def groups(self) -> dict[str, list[DeploymentTarget]]:
        if await self.epoch.moved():
            self.clear()
        if time.monotonic() - self._loaded_at >= settings.DEPLOYMENT_CACHE_TTL:
            try:
                self._groups = await _deployments_load()
            except DatabaseError as exc:
                if not self._groups:
                    raise ServiceUnavailable(
                        "Model deployments cannot be loaded right now (database unavailable); retry shortly."
                    ) from exc
            self._loaded_at = time.monotonic()
        return self._groups

    async def pick(self, model_name: str) -> DeploymentTarget | None:
        group = (await self.groups()).get(model_name)
        if not group:
            return None
        return group[0] if len(group) == 1 else random.choice(group)


def _deployments_load_sync() -> dict[str, list[DeploymentTarget]]:
    close_old_connections()
    groups: dict[str, list[DeploymentTarget]] = {}
    for deployment in ModelDeployment.objects.filter(enabled=True).order_by("model_name", "id"):
        groups.setdefault(deployment.model_name, []).append(DeploymentTarget.from_model(deployment))
    return groups


_deployments_load = sync_to_async(_deployments_load_sync, thread_sensitive=True)

deployment_cache = DeploymentCache()
