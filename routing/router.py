"""Routing one request: the first choice, retries within the group, fallbacks to other groups, the record.

The strategies choose (``routing.strategies``) on the shared state (``routing.route_state``);
this module decides what happens when an attempt fails.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings

from core.errors import NotFound, PlatformError, RateLimited, ServiceUnavailable
from observability import metrics
from routing.route_state import route_state
from routing.selectors import DeploymentTarget, GroupPolicy, deployment_cache
from routing.strategies import Choice, deployment_choose
from tenants.auth import KeyContext

T = TypeVar("T")


@dataclass(slots=True)
class _Outcome:
    """How one group's attempts ended: served (``done``), or the last error and the fallbacks it calls for."""

    kind: str
    error: PlatformError | None = None
    done: bool = False
    result: Any = None


class RouteRun:
    """Routes one request: chooses a deployment, retries, falls back, and keeps the record.

    ``start`` resolves the model group and makes the first choice (the quota reservation
    prices the request with it); ``execute`` calls the upstream through ``call`` until an
    attempt succeeds or every option is spent. The chosen deployment stays counted as
    busy until ``release``.
    """

    def __init__(self, *, key: KeyContext, stream: bool, tokens: int) -> None:
        self.key = key
        self.stream = stream
        self.tokens = tokens
        self.state = route_state()
        self.decision_s = 0.0
        self.wait_s = 0.0  # time spent in failed attempts and backoff: upstream time, not overhead
        self.served: DeploymentTarget | None = None
        self.served_model = ""
        self.fallbacks: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.record: dict[str, Any] = {}
        self._active: DeploymentTarget | None = None
        self._attempt_started = 0.0
        self._model = ""
        self._targets: list[DeploymentTarget] = []
        self._policy: GroupPolicy | None = None
        self._first: Choice | None = None

    async def start(self, model: str) -> DeploymentTarget:
        """Resolve ``model`` and choose; returns the deployment to price the request with."""
        started = time.perf_counter()
        targets, policy = await deployment_cache.group(model)
        if not targets:
            raise NotFound(f"The model '{model}' does not exist.", param="model", code="model_not_found")
        if not self.key.allows_model(model):
            raise self.key.denied(
                f"This API key is not allowed to use the model '{model}'.",
                param="model",
                code="model_not_allowed",
                target=f"model:{model}",
            )
        self._model, self._targets, self._policy = model, targets, policy
        states = await self.state.view(targets)
        self._first = choice = deployment_choose(policy, targets, states, stream=self.stream, tokens=self.tokens)
        self.record = {
            "group": model,
            "strategy": policy.routing_strategy,
            "policy_version": policy.version,
            "shared_state": self.state.shared,
            "candidates": choice.candidates,
            "chosen": choice.target.id if choice.target else None,
        }
        self.decision_s += time.perf_counter() - started
        return choice.target or targets[0]

    async def execute(self, call: Callable[[DeploymentTarget], Awaitable[T]]) -> T:
        assert self._policy is not None and self._first is not None
        policy = self._policy
        outcome = await self._group_run(self._model, self._targets, policy, self._first, call)
        if outcome.done:
            return outcome.result  # type: ignore[return-value]
        options = {
            "context_window": policy.context_window_fallbacks,
            "content_policy": policy.content_policy_fallbacks,
        }.get(outcome.kind, policy.fallbacks)
        for model in options:
            if len(self.attempts) >= settings.ROUTING_MAX_ATTEMPTS:
                break
            entry: dict[str, Any] = {"model": model, "reason": outcome.kind}
            self.fallbacks.append(entry)
            if not self.key.allows_model(model):
                entry["skipped"] = "not allowed for this key"
                continue
            started = time.perf_counter()
            targets, fallback_policy = await deployment_cache.group(model)
            if not targets:
                entry["skipped"] = "no deployments"
                self.decision_s += time.perf_counter() - started
                continue
            states = await self.state.view(targets)
            choice = deployment_choose(fallback_policy, targets, states, stream=self.stream, tokens=self.tokens)
            entry["candidates"] = choice.candidates
            self.decision_s += time.perf_counter() - started
            fallback = await self._group_run(model, targets, fallback_policy, choice, call)
            if fallback.done:
                return fallback.result  # type: ignore[return-value]
            if fallback.error is not None:
                outcome.error = fallback.error
        if outcome.error is not None:
            raise outcome.error
        raise self._unavailable(self._model, self._first)

    async def _group_run(
        self,
        model: str,
        targets: list[DeploymentTarget],
        policy: GroupPolicy,
        choice: Choice,
        call: Callable[[DeploymentTarget], Awaitable[T]],
    ) -> _Outcome:
        target = choice.target
        if target is None:
            return _Outcome(kind="retry", error=self._unavailable(model, choice))
        tried: set[int] = set()
        error: PlatformError | None = None
        for attempt in range(policy.num_retries + 1):
            self.state.begin(target.id, self.tokens)
            self._active = target
            self._attempt_started = started = time.perf_counter()
            try:
                result = await call(target)
            except PlatformError as exc:
                elapsed = time.perf_counter() - started
                self.wait_s += elapsed
                self._active = None
                self.state.end(target.id, latency_ms=None, ttft_ms=None, tokens=0)
                kind = _retry_kind(exc)
                note: dict[str, Any] = {
                    "deployment": target.id,
                    "group": model,
                    "status": exc.status,
                    "error": exc.code or exc.type,
                    "ms": round(elapsed * 1000, 3),
                }
                self.attempts.append(note)
                metrics.upstream_error_observe(model, target.litellm_model, exc.code or exc.type)
                if kind == "fatal":
                    raise
                error = exc
                if kind != "retry":
                    return _Outcome(kind=kind, error=exc)
                if len(targets) > 1 and await self.state.fail(target.id, policy):
                    note["cooldown"] = policy.cooldown_time
                    metrics.cooldown_observe(model, target.litellm_model, exc.code or exc.type)
                tried.add(target.id)
                if attempt == policy.num_retries or len(self.attempts) >= settings.ROUTING_MAX_ATTEMPTS:
                    break
                chosen_at = time.perf_counter()
                states = await self.state.view(targets)
                retry = deployment_choose(
                    policy, targets, states, stream=self.stream, tokens=self.tokens, tried=frozenset(tried)
                )
                self.decision_s += time.perf_counter() - chosen_at
                if retry.target is None:
                    break
                if retry.target.id == target.id:
                    # Only the failed deployment is left: back off before asking it again.
                    delay = max(policy.retry_after * (2**attempt), _retry_after_header(exc))
                    delay = min(delay, settings.ROUTING_MAX_BACKOFF)
                    if delay:
                        note["backoff_ms"] = round(delay * 1000, 3)
                        await asyncio.sleep(delay)
                        self.wait_s += delay
                target = retry.target
                continue
            self.served, self.served_model = target, model
            return _Outcome(kind="", done=True, result=result)
        return _Outcome(kind="retry", error=error)

    def _unavailable(self, model: str, choice: Choice) -> PlatformError:
        if choice.no_capacity:
            wait = max(1, math.ceil(60 - time.time() % 60))
            return RateLimited(
                f"Every deployment of model '{model}' is at its rpm/tpm limit; retry in {wait} s.",
                code="deployment_capacity_exhausted",
                headers={"Retry-After": str(wait)},
            )
        wait = max(1, math.ceil(choice.retry_in))
        return ServiceUnavailable(
            f"Every deployment of model '{model}' is cooling down after failures; retry in {wait} s.",
            code="no_deployment_available",
            headers={"Retry-After": str(wait)},
        )

    def release(self, *, latency_ms: float | None, ttft_ms: float | None, tokens: int) -> None:
        """The served request is over (or was cancelled): free its slot and note its latency."""
        target, self._active = self._active, None
        if target is not None:
            done = self.served is not None and target.id == self.served.id
            self.state.end(
                target.id,
                latency_ms=latency_ms if done else None,
                ttft_ms=ttft_ms if done else None,
                tokens=tokens if done else 0,
            )

    def decision_record(self) -> dict[str, Any]:
        record = dict(self.record)
        record["served"] = self.served.id if self.served else None
        record["served_model"] = self.served_model or None
        record["attempts"] = self.attempts
        record["fallbacks"] = self.fallbacks
        record["decision_ms"] = round(self.decision_s * 1000, 4)
        return record

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._policy is None:
            return []
        model = self.served_model or self._model
        used = sum(1 for entry in self.fallbacks if "skipped" not in entry)
        return [
            (b"x-route-model", model.encode()),
            (b"x-route-strategy", self._policy.routing_strategy.encode()),
            (b"x-route-fallbacks", str(used).encode()),
        ]


def _retry_kind(exc: PlatformError) -> str:
    """How a failed attempt is handled: retried, a special fallback, or returned as is."""
    if exc.code == "context_window_exceeded":
        return "context_window"
    if exc.code == "content_policy_violation":
        return "content_policy"
    if exc.status == 429 or exc.status >= 500:
        return "retry"
    return "fatal"


def _retry_after_header(exc: PlatformError) -> float:
    try:
        return float(exc.headers.get("Retry-After") or 0)
    except ValueError:
        return 0.0
