"""Smart model groups: per request, choose which public model serves a request to a smart group.

The chat flow calls ``smart_route`` before deployment routing. It returns ``None`` for an
ordinary model name (the common case, which must cost next to nothing) and a
``SmartDecision`` naming the public model to use when ``model`` is a smart group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routing.ml.decide import smart_decide


@dataclass(frozen=True, slots=True)
class SmartDecision:
    model: str  # the public model name that serves the request
    requested: str  # the smart group the client asked for
    router: str  # which router decided, with its version (e.g. "knn@3", "rules")
    record: dict[str, Any] = field(default_factory=dict)  # kept in the routing decision record
    headers: tuple[tuple[bytes, bytes], ...] = ()  # extra response headers


async def smart_route(*, model: str, payload: dict[str, Any], tenant_id: int, request_id: str) -> SmartDecision | None:
    """The decision for a request to ``model``, or None when ``model`` is not a smart group.

    Inference runs in a worker thread; a non-smart name costs one dict lookup in a
    per-process cache. See ``routing.ml`` for the routers and their training.
    """
    outcome = await smart_decide(model=model, payload=payload, tenant_id=tenant_id, request_id=request_id)
    if outcome is None:
        return None
    return SmartDecision(
        model=outcome.served, requested=model, router=outcome.router, record=outcome.record, headers=outcome.headers
    )
