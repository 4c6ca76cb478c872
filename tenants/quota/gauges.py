"""How much of each limit is in use right now, for the admin's usage page."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tenants.quota.checks import MICROS, QuotaRule, quota_checks
from tenants.quota.refusals import REFUSALS
from tenants.quota.store import counters

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Gauge:
    """How much of one limit is in use right now (for the admin's usage page)."""

    rule: QuotaRule
    kind: str
    used: float
    limit: float
    reset_at: float

    @property
    def label(self) -> str:
        return REFUSALS[self.kind][2]


async def quota_usage(rules: list[QuotaRule]) -> list[Gauge]:
    """Current consumption of every limit of ``rules``; empty when the store is unreachable."""
    checks = [check for rule in rules for check in quota_checks((rule,), rule.model, 0, 0, 0)]
    try:
        values = await counters().values(checks)
    except Exception as exc:
        logger.warning("quota usage unavailable: %s", exc)
        return []
    scale = {"budget": MICROS}
    return [
        Gauge(
            check.rule,
            check.kind,
            value / scale.get(check.kind, 1),
            check.limit / scale.get(check.kind, 1),
            check.reset_at,
        )
        for check, value in zip(checks, values, strict=True)
    ]
