"""Quotas on the hot path: one atomic check-and-reserve across all matching limits, then settle.

Counters live in Redis when ``QUOTA_REDIS_URL`` (by default ``REDIS_URL``) is set, so every
server process counts against the same numbers; one Lua script checks every limit and
reserves on all of them, or on none. Without Redis (the embedded mode) the same logic runs
on in-process counters. The hot path reads top to bottom in ``reservations``; what a request
reserves is planned in ``checks``, the counters are ``local_counters`` and ``redis_counters``
(their scripts in ``scripts``, run by ``script_clients``), settlements are batched in
``settlements``, and ``store`` holds this process's counters and batch.
"""

from __future__ import annotations

from tenants.quota.checks import (
    BUDGET_SLACK_MS,
    MICROS,
    Check,
    QuotaRule,
    budget_key,
    counter_base,
    quota_windows,
)
from tenants.quota.gauges import Gauge, quota_usage
from tenants.quota.local_counters import LocalCounters
from tenants.quota.redis_counters import RedisCounters
from tenants.quota.refusals import QuotaExceeded
from tenants.quota.reservations import Reservation, quota_reserve, quota_settle
from tenants.quota.settlements import SettleBatch
from tenants.quota.store import (
    after_outage,
    counters,
    quota_settle_flush,
    quota_store_state,
    settle_batch,
)
from tenants.quota.tool_calls import tool_call_quota_reserve

__all__ = [
    "BUDGET_SLACK_MS",
    "MICROS",
    "Check",
    "Gauge",
    "LocalCounters",
    "QuotaExceeded",
    "QuotaRule",
    "RedisCounters",
    "Reservation",
    "SettleBatch",
    "after_outage",
    "budget_key",
    "counter_base",
    "counters",
    "quota_reserve",
    "quota_settle",
    "quota_settle_flush",
    "quota_store_state",
    "quota_usage",
    "quota_windows",
    "settle_batch",
    "tool_call_quota_reserve",
]
