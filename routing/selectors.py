"""Reads for the hot path: which deployments serve a model, from an in-process cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core import registry
from core.epoch import SharedEpoch
from core.errors import ServiceUnavailable
from core.hot_reads import ReloadedValue
from routing.credentials import params_merge
from routing.models import OPENAI_DEFAULT_API_BASE, ModelDeployment, RouteGroup


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    """A deployment as the hot path uses it: plain values, the credentials already decrypted.

    ``extra_params`` holds every litellm param, the decrypted ``secret_params`` merged
    in (secret headers into ``extra_headers``), as litellm takes them. Neither it nor
    ``api_key`` appears in ``repr``, so a logged target or a traceback shows no credential.
    """

    id: int
    model_name: str
    litellm_model: str
    provider: str
    upstream_model: str
    api_base: str
    api_key: str = field(repr=False)
    passthrough: bool
    created: int
    extra_params: dict[str, Any] = field(default_factory=dict, repr=False)

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
            extra_params=params_merge(deployment.extra_params or {}, deployment.secret_params or {}),
        )


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """A route group's settings as the hot path uses them (defaults from ``ROUTING_*``)."""

    model_name: str
    routing_strategy: str
    num_retries: int
    retry_after: float
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    content_policy_fallbacks: tuple[str, ...] = ()
    allowed_fails: int = 3
    fail_window: float = 60.0
    cooldown_time: float = 5.0
    version: int = 0  # 0: no route group, the defaults apply

    @classmethod
    def default(cls, model_name: str) -> GroupPolicy:
        return cls(
            model_name=model_name,
            routing_strategy=settings.ROUTING_DEFAULT_STRATEGY,
            num_retries=settings.ROUTING_NUM_RETRIES,
            retry_after=settings.ROUTING_RETRY_AFTER,
            allowed_fails=settings.ROUTING_ALLOWED_FAILS,
            cooldown_time=settings.ROUTING_COOLDOWN_TIME,
        )

    @classmethod
    def from_model(cls, group: RouteGroup) -> GroupPolicy:
        return cls(
            model_name=group.model_name,
            routing_strategy=group.routing_strategy,
            num_retries=group.num_retries,
            retry_after=group.retry_after,
            fallbacks=tuple(group.fallbacks or ()),
            context_window_fallbacks=tuple(group.context_window_fallbacks or ()),
            content_policy_fallbacks=tuple(group.content_policy_fallbacks or ()),
            allowed_fails=group.allowed_fails,
            fail_window=group.fail_window,
            cooldown_time=group.cooldown_time,
            version=group.version,
        )


class DeploymentCache:
    """All enabled deployments, grouped by public model name, with their route groups' policies.

    Reloaded in the background every ``DEPLOYMENT_CACHE_TTL`` seconds, or as soon as the
    shared epoch says an admin changed one (then the next request waits for the reload, at
    most ``DB_READ_WAIT``); while the database is away the last load keeps serving.
    """

    def __init__(self) -> None:
        self._loaded: ReloadedValue[tuple[dict[str, list[DeploymentTarget]], dict[str, GroupPolicy]]] = ReloadedValue(
            "model deployments", lambda: _deployments_load_sync(), lambda: settings.DEPLOYMENT_CACHE_TTL
        )
        self.epoch = SharedEpoch("deployment")

    def clear(self) -> None:
        self._loaded.invalidate()

    @property
    def loaded(self) -> bool:
        """Has this process anything to route with (readiness)?"""
        return self._loaded.value is not None

    async def _current(self) -> tuple[dict[str, list[DeploymentTarget]], dict[str, GroupPolicy]]:
        if await self.epoch.moved():
            self.clear()
        loaded = await self._loaded.get()
        if loaded is None:
            raise ServiceUnavailable(
                "Model deployments cannot be loaded right now (database unavailable); retry shortly."
            )
        return loaded

    async def groups(self) -> dict[str, list[DeploymentTarget]]:
        return (await self._current())[0]

    async def group(self, model_name: str) -> tuple[list[DeploymentTarget], GroupPolicy]:
        """The enabled deployments of ``model_name`` (empty if none) and its policy."""
        groups, policies = await self._current()
        policy = policies.get(model_name)
        if policy is None:
            policy = policies[model_name] = GroupPolicy.default(model_name)
        return groups.get(model_name, []), policy


def _deployments_load_sync() -> tuple[dict[str, list[DeploymentTarget]], dict[str, GroupPolicy]]:
    groups: dict[str, list[DeploymentTarget]] = {}
    for deployment in ModelDeployment.objects.filter(enabled=True).order_by("model_name", "id"):
        groups.setdefault(deployment.model_name, []).append(DeploymentTarget.from_model(deployment))
    policies = {group.model_name: GroupPolicy.from_model(group) for group in RouteGroup.objects.all()}
    return groups, policies


deployment_cache = DeploymentCache()
registry.register("routing.deployment_cache", reset=deployment_cache.clear)
