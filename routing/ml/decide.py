"""The per-request smart-routing decision, run in a worker thread off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from routing.ml.features import prompt_text
from routing.ml.routers import threshold_for_share
from routing.ml.samples import SampleRow, sample_record
from routing.ml.selectors import ArtifactIntegrityError, ArtifactRef, GroupState, inference_executor, smart_cache
from routing.tokens import output_tokens_limit, text_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a smart group decided: the model to serve and everything worth recording about it."""

    group: str
    served: str
    router: str
    record: dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Choice:
    model: str  # "strong" or "weak"
    score: float | None
    threshold: float | None
    reason: str
    router: str


def _bucket(request_id: str) -> int:
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big") % 100


def _rules_choice(group: GroupState, text: str, tenant_id: int, label: str = "rules") -> Choice:
    rules = group.rules
    lowered = text.lower()
    if tenant_id in group.strong_tenants:
        return Choice("strong", None, None, "tenant", label)
    if tenant_id in group.weak_tenants:
        return Choice("weak", None, None, "tenant", label)
    for word in rules.get("strong_keywords", ()):
        if str(word).lower() in lowered:
            return Choice("strong", None, None, f"keyword:{word}", label)
    for word in rules.get("weak_keywords", ()):
        if str(word).lower() in lowered:
            return Choice("weak", None, None, f"keyword:{word}", label)
    limit = rules.get("strong_if_chars_over")
    if isinstance(limit, int) and len(text) > limit:
        return Choice("strong", None, None, f"length>{limit}", label)
    default = "strong" if rules.get("default") == "strong" else "weak"
    return Choice(default, None, None, "default", label)


def _learned_choice(group: GroupState, artifact: ArtifactRef, text: str, share: float) -> Choice:
    router = smart_cache.router(artifact.id)
    score = router.score(text)
    threshold = threshold_for_share(artifact.calibration, share)
    return Choice("strong" if score >= threshold else "weak", score, threshold, "win_rate", artifact.label)


def _choose(group: GroupState, artifact: ArtifactRef | None, text: str, tenant_id: int, share: float) -> Choice:
    if group.kind == "rules" or artifact is None:
        reason = "" if group.kind == "rules" else "no_active_router"
        choice = _rules_choice(group, text, tenant_id)
        return Choice(choice.model, None, None, reason or choice.reason, choice.router)
    try:
        return _learned_choice(group, artifact, text, share)
    except ArtifactIntegrityError as exc:
        logger.error("smart group %s: %s; serving the strong model", group.name, exc)
        return Choice("strong", None, None, "router_unavailable", artifact.label)


def _float(value: float | None) -> float | None:
    # JSON has no infinity: a share of 0 or 1 has no finite threshold.
    return None if value is None or not math.isfinite(value) else round(value, 6)


def decide_sync(
    group: GroupState, text: str, *, tenant_id: int, request_id: str, max_cost: float | None, max_tokens: int
) -> Outcome:
    started = time.perf_counter()
    share = group.tenant_shares.get(tenant_id, group.strong_share)
    arm = ""
    artifact = group.active
    if group.ab is not None and group.ab_percent:
        arm = "B" if _bucket(request_id) < group.ab_percent else "A"
        artifact = group.ab if arm == "B" else group.active
    choice = _choose(group, artifact, text, tenant_id, share)
    role, reason = choice.model, choice.reason
    estimated_tokens = text_tokens(len(text)) + max_tokens
    costs = {
        "strong": estimated_tokens * group.strong_price / 1e6,
        "weak": estimated_tokens * group.weak_price / 1e6,
    }
    if max_cost is not None and role == "strong" and costs["strong"] > max_cost:
        role, reason = "weak", "max_cost"
    shadow_record = None
    if group.shadow is not None and group.kind != "rules":
        try:
            shadow = _learned_choice(group, group.shadow, text, share)
            shadow_record = {
                "router": shadow.router,
                "would_choose": getattr(group, f"{shadow.model}_model"),
                "score": _float(shadow.score),
                "threshold": _float(shadow.threshold),
            }
        except ArtifactIntegrityError as exc:
            shadow_record = {"router": group.shadow.label, "error": str(exc)}
    chosen = group.strong_model if role == "strong" else group.weak_model
    served = group.strong_model if group.mode == "shadow" else chosen
    score = choice.score
    record = {
        "smart_group": group.name,
        "router": choice.router,
        "router_kind": group.kind if artifact is None else artifact.kind,
        "router_version": choice.router.partition("@")[2] or None,
        "mode": group.mode,
        "shadow_mode": group.mode == "shadow",
        "arm": arm or None,
        "strong_share": share,
        "share_source": "tenant" if tenant_id in group.tenant_shares else "group",
        "threshold": _float(choice.threshold),
        "candidates": [
            {
                "model": group.strong_model,
                "role": "strong",
                "price_per_mtok": group.strong_price,
                "estimated_cost": round(costs["strong"], 8),
                "predicted_win_rate": _float(score),
            },
            {
                "model": group.weak_model,
                "role": "weak",
                "price_per_mtok": group.weak_price,
                "estimated_cost": round(costs["weak"], 8),
                "predicted_win_rate": None if score is None else _float(1.0 - score),
            },
        ],
        "max_cost_usd": max_cost,
        "reason": reason,
        "chosen": chosen,
        "served": served,
        "shadow": shadow_record,
    }
    record["decision_ms"] = round((time.perf_counter() - started) * 1000, 3)
    headers = [(b"x-route-router", choice.router.encode()), (b"x-route-smart-group", group.name.encode())]
    if arm:
        headers.append((b"x-route-arm", arm.encode()))
    if group.mode == "shadow":
        headers.append((b"x-route-shadow", chosen.encode()))
    return Outcome(group.name, served, choice.router, record, tuple(headers))


def _max_cost(payload: dict[str, Any]) -> float | None:
    # A gateway-only field: taken out so the provider never sees it.
    value = payload.pop("max_cost_usd", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidRequest(
            "Invalid value for 'max_cost_usd': expected a non-negative number of USD.",
            param="max_cost_usd",
            code="invalid_value",
        )
    return float(value)


async def smart_decide(*, model: str, payload: dict[str, Any], tenant_id: int, request_id: str) -> Outcome | None:
    snapshot = await smart_cache.current()
    group = snapshot.groups.get(model)
    if group is None:
        return None
    started = time.perf_counter()
    max_cost = _max_cost(payload)
    text = prompt_text(payload)
    max_tokens = output_tokens_limit(payload)
    outcome = await asyncio.get_running_loop().run_in_executor(
        inference_executor,
        lambda: decide_sync(
            group, text, tenant_id=tenant_id, request_id=request_id, max_cost=max_cost, max_tokens=max_tokens
        ),
    )
    outcome.record["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    outcome.record["prompt_sha256"] = digest
    sample_record(
        SampleRow(
            request_id=request_id,
            tenant_id=tenant_id,
            group_id=group.id,
            prompt_sha256=digest,
            prompt_text=text if tenant_id in snapshot.keep_text_tenants else "",
            prompt_chars=len(text),
            outcome=outcome,
        )
    )
    return outcome
