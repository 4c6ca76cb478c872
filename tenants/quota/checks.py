"""What a request reserves: the quota rules, and the counters, limits and amounts they come to in the current windows.

Windows are fixed and aligned to the clock (UTC): requests and tokens per minute, spend per
day or calendar month. Concurrency counts requests in flight.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core import registry
from tenants.quota.scripts import BUDGET, COUNTER, SLOTS

MICROS = 1_000_000  # spend is counted in micro-dollars so Redis can INCRBY integers
BUDGET_SLACK_MS = 3600 * 1000  # a budget outlives its window by an hour: late settlements still land


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One quota row as the hot path needs it."""

    scope: str  # "key:12" or "tenant:3"
    label: str  # for messages: "API key sk-abc…" or "tenant acme"
    model: str  # "" applies to every model
    rpm: int | None = None
    tpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    parallel: int | None = None
    budget_micros: int | None = None
    budget_duration: str = "30d"
    tool_rpm: int | None = None  # MCP tool calls per minute

    def applies_to(self, model: str) -> bool:
        return not self.model or self.model == model


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # requests, tokens, input_tokens, output_tokens, parallel, budget, tool_calls
    key: str
    limit: int
    amount: int
    ttl_ms: int
    reset_at: float  # epoch seconds when the window ends (0 for parallel)
    rule: QuotaRule
    store: str = COUNTER  # COUNTER, BUDGET or SLOTS
    extra: int | bytes = 0  # a budget's start minute; the request's member of the concurrency set
    expires_at: float = 0.0  # epoch seconds after which the counter is gone (nothing left to settle)


# A settlement as the store takes it: (store kind, counter key, extra, delta, ttl_ms); for the
# concurrency set, extra is the members to release (a tuple) and delta minus their number.
Adjustment = tuple[str, str, Any, int, int]


def quota_windows(now: float) -> dict[str, tuple[str, float]]:
    """Window ids and their end times (epoch seconds) for the fixed, clock-aligned windows."""
    minute = int(now // 60)
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    day_end = dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    month_end = dt.datetime(today.year + today.month // 12, today.month % 12 + 1, 1, tzinfo=dt.UTC)
    return {
        "minute": (f"m{minute}", (minute + 1) * 60.0),
        "1d": (f"d{today:%Y%m%d}", day_end.timestamp()),
        "30d": (f"M{today:%Y%m}", month_end.timestamp()),
    }


def counter_base(prefix: str, scope: str, model: str) -> str:
    return f"{prefix}:q:{scope}:{model or '*'}"


def budget_key(base: str, window_id: str) -> str:
    # "spend", not the "budget" integer counters of earlier versions: a hash under an old name
    # would be refused as a key of another type.
    return f"{base}:spend:{window_id}"


# (kind, store kind, counter key, limit, window end in epoch seconds or 0, TTL slack in ms, rule)
Step = tuple[str, str, str, int, float, int, QuotaRule]


class PlanCache:
    """The counters ``rules`` use for a model in the current windows, built once per minute.

    Every window changes on a minute boundary (UTC days and months too), so a plan built in
    this minute holds for every request of the same rules and model until the next one."""

    MAX_PLANS = 10_000  # many distinct keys in one minute: keep memory bounded

    def __init__(self) -> None:
        self._plans: dict[tuple[Any, ...], list[Step]] = {}
        self._minute = -1

    def clear(self) -> None:
        self._plans.clear()
        self._minute = -1

    def plan(self, rules: tuple[QuotaRule, ...], model: str, now: float) -> list[Step]:
        minute = int(now // 60)
        if minute != self._minute:
            self._plans.clear()
            self._minute = minute
        prefix = settings.CACHE_KEY_PREFIX
        cache_key = (rules, model, prefix)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = _plan_build(rules, model, prefix, now)
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.clear()
            self._plans[cache_key] = plan
        return plan


def _plan_build(rules: tuple[QuotaRule, ...], model: str, prefix: str, now: float) -> list[Step]:
    windows = quota_windows(now)
    minute_id, minute_end = windows["minute"]
    plan: list[Step] = []
    for rule in rules:
        if not rule.applies_to(model):
            continue
        base = counter_base(prefix, rule.scope, rule.model)
        for kind, limit in (
            ("requests", rule.rpm),
            ("tokens", rule.tpm),
            ("input_tokens", rule.input_tpm),
            ("output_tokens", rule.output_tpm),
        ):
            if limit is not None:
                plan.append((kind, COUNTER, f"{base}:{kind}:{minute_id}", limit, minute_end, 5000, rule))
        if rule.parallel is not None:
            plan.append(("parallel", SLOTS, f"{base}:slots", rule.parallel, 0.0, 0, rule))
        if rule.budget_micros is not None:
            window_id, window_end = windows[rule.budget_duration]
            plan.append(
                ("budget", BUDGET, budget_key(base, window_id), rule.budget_micros, window_end, BUDGET_SLACK_MS, rule)
            )
    return plan


_plans = PlanCache()
registry.register("quota.plans", reset=_plans.clear)


class SlotMembers:
    """Members of the concurrency sets: unique per request, and per process (a forked child takes a new tag)."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.retag()

    def retag(self) -> None:
        self.tag = os.urandom(6).hex().encode() + b":"

    def next(self) -> bytes:
        return self.tag + b"%d" % next(self._ids)


_slot_members = SlotMembers()
os.register_at_fork(after_in_child=_slot_members.retag)


def quota_checks(
    rules: tuple[QuotaRule, ...], model: str, tokens_in: int, tokens_out: int, cost_micros: int
) -> list[Check]:
    """What a request of ``model`` reserves on every limit of ``rules`` that applies, in the current windows."""
    now = time.time()
    amounts = {
        "requests": 1,
        "tokens": tokens_in + tokens_out,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "parallel": 1,
        "budget": cost_micros,
    }
    checks = []
    for kind, store, key, limit, end, slack, rule in _plans.plan(rules, model, now):
        extra: int | bytes = 0
        if store == SLOTS:
            ttl = int(settings.QUOTA_PARALLEL_LEASE * 1000)
            extra = _slot_members.next()
        else:
            # A window's counter lives until the window ends plus some slack (whole seconds: the
            # same TTL for every request of a second is encoded once, see command_bytes).
            ttl = math.ceil(end - now) * 1000 + slack
            if store == BUDGET:
                extra = int(now // 60)  # the minute the request started in: the records' watermark unit
        checks.append(Check(kind, key, limit, amounts[kind], ttl, end, rule, store, extra, now + ttl / 1000))
    return checks


def tool_call_checks(rules: tuple[QuotaRule, ...]) -> list[Check]:
    """One MCP tool call on every tool-call limit of ``rules`` that applies to all models, this minute."""
    now = time.time()
    minute = int(now // 60)
    ttl = int(((minute + 1) * 60 - now) * 1000) + 5000
    return [
        Check(
            "tool_calls",
            f"{counter_base(settings.CACHE_KEY_PREFIX, rule.scope, '')}:tool_calls:m{minute}",
            rule.tool_rpm,
            1,
            ttl,
            (minute + 1) * 60.0,
            rule,
            expires_at=now + ttl / 1000,
        )
        for rule in rules
        if rule.tool_rpm is not None and not rule.model
    ]
