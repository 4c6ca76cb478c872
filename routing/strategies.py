"""The routing strategies (LiteLLM Router's names) and how each picks a deployment of a group."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import models

from routing.pricing import token_prices

if TYPE_CHECKING:
    from collections import deque

    from routing.route_state import DeploymentState
    from routing.selectors import DeploymentTarget, GroupPolicy


class RoutingStrategy(models.TextChoices):
    """Every strategy a route group may use; the model's choices, the config check and the router read this."""

    SIMPLE_SHUFFLE = "simple-shuffle", "Weighted shuffle (litellm_params.weight)"
    LEAST_BUSY = "least-busy", "Least busy (fewest requests in flight)"
    LATENCY_BASED = "latency-based-routing", "Lowest latency (moving window; time to first token for streams)"
    COST_BASED = "cost-based-routing", "Lowest price per token"
    USAGE_BASED_V2 = "usage-based-routing-v2", "Usage based (stays under each deployment's rpm/tpm)"


def _mean(values: deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _price(target: DeploymentTarget) -> float | None:
    params = target.extra_params
    if "input_cost_per_token" in params or "output_cost_per_token" in params:
        return float(params.get("input_cost_per_token") or 0) + float(params.get("output_cost_per_token") or 0)
    prices = token_prices(target.litellm_model)
    return None if prices is None else prices.input + prices.output


@dataclass(slots=True)
class Choice:
    """One selection: the deployment picked (None: no candidate left) and why."""

    target: DeploymentTarget | None
    candidates: list[dict[str, Any]]
    retry_in: float = 0.0  # when every candidate is cooling down: seconds until the first recovers
    no_capacity: bool = False  # usage-based: every candidate is at its rpm/tpm


def deployment_choose(
    policy: GroupPolicy,
    targets: list[DeploymentTarget],
    states: dict[int, DeploymentState],
    *,
    stream: bool,
    tokens: int,
    tried: frozenset[int] = frozenset(),
) -> Choice:
    """Pick a deployment of a group by its strategy; cooling deployments are left out.

    Deployments already tried by this request are used again only when nothing else is
    left. A group of one deployment never cools down (as in LiteLLM): there is nothing
    to route around, so its failures are reported rather than hidden.
    """
    now = time.time()
    strategy = policy.routing_strategy
    candidates: list[dict[str, Any]] = []
    usable: list[tuple[DeploymentTarget, float, dict[str, Any]]] = []
    retry_in = float("inf")
    capacity_left = False
    for target in targets:
        state = states[target.id]
        entry: dict[str, Any] = {"id": target.id, "model": target.litellm_model}
        candidates.append(entry)
        if len(targets) > 1 and state.cooldown_until > now:
            entry["excluded"] = "cooldown"
            retry_in = min(retry_in, state.cooldown_until - now)
            continue
        if strategy == RoutingStrategy.USAGE_BASED_V2:
            rpm, tpm = state.usage_at(now)
            rpm_limit, tpm_limit = target.extra_params.get("rpm"), target.extra_params.get("tpm")
            if rpm_limit is not None and rpm + 1 > rpm_limit:
                entry["excluded"] = f"rpm {rpm}/{rpm_limit}"
                continue
            if tpm_limit is not None and tpm + tokens > tpm_limit:
                entry["excluded"] = f"tpm {tpm}/{tpm_limit}"
                continue
            capacity_left = True
            score: float = float(tpm)
        elif strategy == RoutingStrategy.LEAST_BUSY:
            score = float(state.inflight)
        elif strategy == RoutingStrategy.LATENCY_BASED:
            # No samples yet scores 0 so a new deployment gets traffic and a measurement.
            score = _mean(state.ttfts if stream else state.latencies) or 0.0
        elif strategy == RoutingStrategy.COST_BASED:
            price = _price(target)
            score = price * 1e6 if price is not None else float("inf")  # USD per 1M tokens (in + out)
        else:
            weight = target.extra_params.get("weight", 1)
            score = float(weight if isinstance(weight, int | float) else 1)
            if score <= 0:
                entry["score"] = score
                entry["excluded"] = "weight 0"
                continue
        # JSON (and so the decision record) has no infinity: an unknown price is recorded as null.
        entry["score"] = round(score, 6) if math.isfinite(score) else None
        if target.id in tried:
            entry["excluded"] = "failed in this request"
            continue
        usable.append((target, score, entry))
    if not usable:
        # Everything left was tried already: retry among those rather than give up.
        usable = [
            (t, e["score"] if e.get("score") is not None else float("inf"), e)
            for t, e in zip(targets, candidates, strict=True)
            if e.get("excluded") == "failed in this request"
        ]
        for _, _, entry in usable:
            del entry["excluded"]
    if not usable:
        return Choice(
            None,
            candidates,
            retry_in=0.0 if retry_in == float("inf") else retry_in,
            no_capacity=strategy == RoutingStrategy.USAGE_BASED_V2 and not capacity_left,
        )
    if len(usable) == 1:
        chosen = usable[0][0]
    elif strategy == RoutingStrategy.SIMPLE_SHUFFLE:
        chosen = random.choices([t for t, _, _ in usable], weights=[s for _, s, _ in usable])[0]
    else:
        best = min(score for _, score, _ in usable)
        chosen = random.choice([t for t, score, _ in usable if score == best])
    return Choice(chosen, candidates)
