"""Reads for the usage dashboard: hourly or daily series, breakdowns and quota gauges."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.db.models import Q, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from routing.models import LATENCY_BUCKETS_MS, UsageRollup
from tenants.auth import quota_rules
from tenants.models import Quota, Tenant
from tenants.quota import Gauge, quota_usage

HISTOGRAM = [f"latency_h{i}" for i in range(len(LATENCY_BUCKETS_MS) + 1)]
TOTALS = ["requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms_sum", *HISTOGRAM]


def percentile_ms(histogram: list[int], q: float) -> float:
    """The upper bound of the latency bucket holding the q-th percentile (0 when empty)."""
    total = sum(histogram)
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return (
                float(LATENCY_BUCKETS_MS[index])
                if index < len(LATENCY_BUCKETS_MS)
                else float(LATENCY_BUCKETS_MS[-1] * 2)
            )
    return float(LATENCY_BUCKETS_MS[-1] * 2)


@dataclass
class Point:
    start: dt.datetime
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    p50_ms: float = 0.0
    p95_ms: float = 0.0


def usage_series(tenant: Tenant, *, days: int) -> list[Point]:
    """One point per hour (days ≤ 2) or per day, gaps filled with zeros, oldest first."""
    now = timezone.now()
    hourly = days <= 2
    step = dt.timedelta(hours=1) if hourly else dt.timedelta(days=1)
    end = (
        now.replace(minute=0, second=0, microsecond=0)
        if hourly
        else now.replace(hour=0, minute=0, second=0, microsecond=0)
    )
    start = end - step * (days * 24 - 1 if hourly else days - 1)
    rows = UsageRollup.objects.filter(tenant=tenant, hour__gte=start)
    grouped: Any  # a values() queryset of dicts, keyed by "hour" or "day"
    if hourly:
        field, grouped = "hour", rows.values("hour")
    else:
        field, grouped = "day", rows.annotate(day=TruncDay("hour", tzinfo=dt.UTC)).values("day")
    sums = {f"s_{name}": Sum(name) for name in TOTALS}
    by_start: dict[Any, dict[str, Any]] = {row[field]: row for row in grouped.annotate(**sums)}
    points = []
    moment = start
    while moment <= end:
        row = by_start.get(moment)
        point = Point(moment)
        if row:
            histogram = [row[f"s_{name}"] or 0 for name in HISTOGRAM]
            point.requests, point.errors = row["s_requests"] or 0, row["s_errors"] or 0
            point.tokens = (row["s_prompt_tokens"] or 0) + (row["s_completion_tokens"] or 0)
            point.cost = row["s_cost_usd"] or Decimal(0)
            point.p50_ms, point.p95_ms = percentile_ms(histogram, 0.5), percentile_ms(histogram, 0.95)
        points.append(point)
        moment += step
    return points


def usage_breakdown(tenant: Tenant, *, days: int, by: str) -> list[dict[str, Any]]:
    """Totals per model (``by="model"``) or per key (``by="api_key"``), biggest spenders first."""
    since = timezone.now() - dt.timedelta(days=days)
    fields = ["model"] if by == "model" else ["api_key__name", "api_key__prefix"]
    return list(
        UsageRollup.objects.filter(tenant=tenant, hour__gte=since)
        .values(*fields)
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by("-cost", "-requests")[:50]
    )


def quota_gauges(tenant: Tenant) -> list[Gauge]:
    quotas = Quota.objects.filter(Q(tenant=tenant) | Q(api_key__tenant=tenant)).select_related("api_key").order_by("id")
    return async_to_sync(quota_usage)(list(quota_rules(quotas, tenant.slug)))
