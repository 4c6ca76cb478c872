"""Offline evaluation of a router: quality recovered vs cost saved, against always-strong and always-weak."""

from __future__ import annotations

from typing import Any

import numpy as np

SHARES = tuple(round(step / 20, 2) for step in range(21))  # 0 %, 5 % … 100 % of calls to the strong model


def _point(route_strong: np.ndarray, q_s: np.ndarray, q_w: np.ndarray, c_s: np.ndarray, c_w: np.ndarray) -> dict:
    quality = float(np.where(route_strong, q_s, q_w).mean())
    cost = float(np.where(route_strong, c_s, c_w).sum())
    return {"strong_share": float(route_strong.mean()), "quality": quality, "cost": cost}


def router_evaluate(
    scores: np.ndarray,
    quality_strong: np.ndarray,
    quality_weak: np.ndarray,
    cost_strong: np.ndarray,
    cost_weak: np.ndarray,
) -> dict[str, Any]:
    """Route held-out prompts at the thresholds for each target share and measure the outcome.

    ``quality_recovered`` is RouteLLM's performance gap recovered,
    (Q - Q_weak) / (Q_strong - Q_weak); ``cost_saved`` is the share of the always-strong
    cost that routing avoids. ``apgr`` averages quality recovered over the shares; a
    random router scores about 0.5 on it.
    """
    baseline_strong = _point(np.ones(len(scores), bool), quality_strong, quality_weak, cost_strong, cost_weak)
    baseline_weak = _point(np.zeros(len(scores), bool), quality_strong, quality_weak, cost_strong, cost_weak)
    gap = baseline_strong["quality"] - baseline_weak["quality"]
    curve = []
    for share in SHARES:
        # Rank-based (ties broken by order) so each point gets exactly its share of calls.
        count = round(share * len(scores))
        route_strong = np.zeros(len(scores), bool)
        if count:
            route_strong[np.argsort(-scores, kind="stable")[:count]] = True
        point = _point(route_strong, quality_strong, quality_weak, cost_strong, cost_weak)
        point["target_share"] = share
        point["quality_recovered"] = (point["quality"] - baseline_weak["quality"]) / gap if gap else 1.0
        point["cost_saved"] = 1.0 - point["cost"] / baseline_strong["cost"] if baseline_strong["cost"] else 0.0
        curve.append({name: round(value, 6) for name, value in point.items()})
    apgr = float(np.mean([point["quality_recovered"] for point in curve]))
    at_half = next(point for point in curve if point["target_share"] == 0.5)
    return {
        "rows": len(scores),
        "baselines": {
            "always_strong": {k: round(v, 6) for k, v in baseline_strong.items()},
            "always_weak": {k: round(v, 6) for k, v in baseline_weak.items()},
        },
        "curve": curve,
        "apgr": round(apgr, 4),
        "quality_recovered_at_50": at_half["quality_recovered"],
        "cost_saved_at_50": at_half["cost_saved"],
    }
