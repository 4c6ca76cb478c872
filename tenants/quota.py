"""Quotas on the hot path: one atomic check-and-reserve across all matching limits, then settle.

Counters live in Redis when ``QUOTA_REDIS_URL`` (by default ``REDIS_URL``) is set, so
every server process counts against the same numbers; one Lua script checks every limit
and reserves on all of them, or on none. Without Redis (the embedded mode) the same logic runs on in-process counters.
Windows are fixed and aligned to the clock (UTC): requests and tokens per minute, spend
per day or calendar month. Concurrency counts requests in flight.

In Redis, a per-minute counter is a plain integer. A budget is a hash: the spend of the
requests started in each minute (one field per minute), ``t`` their total (what the limit
is checked against), and, once ``routing.quota_reconcile`` has run, ``r`` the spend the
usage records hold for the requests started before the minute ``w``. The concurrency limit
is a sorted set of the requests in flight, each a lease its process renews, so the slots
of a process that died free within ``QUOTA_PARALLEL_LEASE`` seconds.

The store is reached with a short timeout and no retries, behind a circuit breaker: while
it is open, requests follow ``QUOTA_FAIL_MODE`` at once. What a request admitted that way
used is charged when the store is back (the settlement batch keeps it meanwhile).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from redis.exceptions import ResponseError

from core.batch_writer import ReplayResult
from core.dead_letters import DeadLetterFile, record_line
from core.errors import PlatformError, RateLimited, ServiceUnavailable
from observability import metrics
from tenants.quota_redis import (
    RedisReplyError,
    Script,
    ScriptConnection,
    StoreBreaker,
    StoreUnavailable,
    script_connection_for,
)

logger = logging.getLogger(__name__)

MICROS = 1_000_000  # spend is counted in micro-dollars so Redis can INCRBY integers

# How a limit is kept in the store: "c" an integer counter of a window, "b" a budget hash
# (spend per start minute), "p" the sorted set of the requests in flight (leases).
COUNTER, BUDGET, SLOTS = "c", "b", "p"

# How the usage script tells a counter's kind: by its name (see ``counter_base`` and ``budget_key``).
KIND_LUA = """
local function kind_of(key)
  if string.sub(key, -6) == ':slots' then return 'p' end
  if string.find(key, ':spend:[dM]%d+$') then return 'b' end
  return 'c'
end
"""

# Reserves for several requests in one call. ARGV[1] = the caller's deadline in the server's
# clock (ms; 0 = none), ARGV[2] = number of requests; then, per request, its number of checks
# n, their store kinds as one string (e.g. "ccpb"), and per check limit, amount, ttl_ms and,
# for a budget or the concurrency set, one more value (the start minute; the request's member).
# KEYS are the counters in the same order. Each request is all or nothing, independently of
# the others. Per request the reply holds: failing index (1-based) and that counter's value
# before the request, or 0 followed by the counters' new values.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Run after the caller gave up waiting (held in a network that dropped it for a while): the
-- caller admitted its requests without a reservation and charges them when they end, so
-- reserving now would count them twice.
if tonumber(ARGV[1]) > 0 and now > tonumber(ARGV[1]) then return {} end
local out = {}
local k, a = 1, 3
local function undo(key, kind, p)
  local amount = tonumber(ARGV[p + 1])
  if kind == 'p' then
    redis.call('ZREM', key, ARGV[p + 3])
  elseif kind == 'b' then
    redis.call('HINCRBY', key, 't', -amount)
    redis.call('HINCRBY', key, ARGV[p + 3], -amount)
  else
    redis.call('DECRBY', key, amount)
  end
end
for _ = 1, tonumber(ARGV[2]) do
  local n, kinds = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  local values, starts, failed, seen = {}, {}, 0, 0
  for i = 0, n - 1 do
    local key, p = KEYS[k + i], a
    local kind = string.sub(kinds, i + 1, i + 1)
    local limit, amount = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
    starts[i + 1] = p
    a = a + (kind == 'c' and 3 or 4)
    local value
    if kind == 'p' then
      value = redis.call('ZCARD', key) + amount
      if value > limit then
        -- Full, counting leases that may have run out (by the server's clock, the same for
        -- every process): drop those and count again. Under the limit they do no harm.
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        value = redis.call('ZCARD', key) + amount
      end
      if value <= limit then
        redis.call('ZADD', key, now + tonumber(ARGV[p + 2]), ARGV[p + 3])
        -- A new set gets a lease-long life; from then on every process holding a member renews
        -- it with its leases (a third of a lease apart), so under steady load it never lapses.
        if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      end
    elseif kind == 'b' then
      -- Increment first and undo on a refusal: one call when the request fits (the usual case).
      value = redis.call('HINCRBY', key, 't', amount)
      -- value == amount: the hash was just created (or was at zero), so give it its window.
      if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      if value <= limit then
        redis.call('HINCRBY', key, ARGV[p + 3], amount)
      else
        redis.call('HINCRBY', key, 't', -amount)
      end
    else
      value = redis.call('INCRBY', key, amount)
      if value == amount then redis.call('PEXPIRE', key, ARGV[p + 2]) end
      if value > limit then redis.call('DECRBY', key, amount) end
    end
    values[i + 1] = value
    if value > limit then
      failed, seen = i + 1, value - amount
      -- skip the arguments of the checks not reached
      for j = i + 1, n - 1 do
        a = a + (string.sub(kinds, j + 1, j + 1) == 'c' and 3 or 4)
      end
      break
    end
  end
  if failed > 0 then
    for i = 1, failed - 1 do
      undo(KEYS[k + i - 1], string.sub(kinds, i, i), starts[i])
    end
    out[#out + 1] = failed
    out[#out + 1] = seen
  else
    out[#out + 1] = 0
    for i = 1, n do
      out[#out + 1] = values[i]
    end
  end
  k = k + n
end
return out
"""

# KEYS: counters. ARGV[1]: the caller's deadline as for the reserve (a settlement run after
# it is kept by the caller and sent again: applying it now would count it twice); ARGV[2]:
# the counters' store kinds as one string; then per counter: delta and ttl_ms for a window
# counter; delta, ttl_ms and the start minute for a budget; for the concurrency set, the
# number of members to release, ttl_ms and the members. A counter never drops below zero.
# Each counter is settled on its own (pcall): one the script cannot change (a key holding
# something else, an overflow) is left as it is and its position returned, and every other
# one is settled.
SETTLE_LUA = """
local function release(key, first, last)
  for i = first, last, 1000 do
    redis.call('ZREM', key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end
local function settle(key, kind, delta, ttl, extra)
  if kind == 'b' then
    -- The spend of requests started before the watermark is what the usage records say,
    -- already in the total: a late adjustment to it would count it twice.
    local watermark = redis.call('HGET', key, 'w')
    if watermark and tonumber(extra) < tonumber(watermark) then return end
    if redis.call('HINCRBY', key, extra, delta) < 0 then redis.call('HSET', key, extra, 0) end
    if redis.call('HINCRBY', key, 't', delta) < 0 then redis.call('HSET', key, 't', 0) end
  elseif redis.call('INCRBY', key, delta) < 0 then
    redis.call('SET', key, 0, 'KEEPTTL')
  end
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ttl) end
end
local t = redis.call('TIME')
if tonumber(ARGV[1]) > 0 and tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return {}
end
local refused = {}
local kinds, p = ARGV[2], 3
for i = 1, #KEYS do
  local kind = string.sub(kinds, i, i)
  local ok
  if kind == 'p' then
    local n = tonumber(ARGV[p])
    ok = pcall(release, KEYS[i], p + 2, p + 1 + n)
    p = p + 2 + n
  else
    ok = pcall(settle, KEYS[i], kind, tonumber(ARGV[p]), ARGV[p + 1], ARGV[p + 2])
    p = p + (kind == 'c' and 2 or 3)
  end
  if not ok then refused[#refused + 1] = i end
end
return refused
"""

# Renews the leases of the requests a process has in flight. ARGV[1] = lease in ms; then,
# per key, its number of members followed by them. A member the store dropped meanwhile (an
# outage longer than the lease, a flushed Redis) is added again: it is still in flight.
LEASE_LUA = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local a = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  for j = 1, n do
    redis.call('ZADD', KEYS[i], expires, ARGV[a + j])
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  a = a + n + 1
end
return #KEYS
"""

# The current value of each counter, for the usage page.
USAGE_LUA = (
    KIND_LUA
    + """
local out = {}
local now = false
for i = 1, #KEYS do
  local kind = kind_of(KEYS[i])
  if kind == 'p' then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  elseif kind == 'b' then
    out[i] = tonumber(redis.call('HGET', KEYS[i], 't') or 0)
  else
    out[i] = tonumber(redis.call('GET', KEYS[i]) or 0)
  end
end
return out
"""
)

_RESERVE, _SETTLE, _LEASE, _USAGE = Script(RESERVE_LUA), Script(SETTLE_LUA), Script(LEASE_LUA), Script(USAGE_LUA)

# Members of the concurrency sets: unique per request, and per process (os.fork renews it).
_process_tag = b""
_slot_ids = itertools.count()


def _tag_process() -> None:
    global _process_tag
    _process_tag = os.urandom(6).hex().encode() + b":"


_tag_process()
os.register_at_fork(after_in_child=_tag_process)


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


@dataclass(slots=True)
class Reservation:
    checks: list[Check] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    settled: bool = False
    # Admitted while the store was unreachable (QUOTA_FAIL_MODE=open): nothing was reserved,
    # so settling charges everything the request used.
    unreserved: bool = False

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers for the tightest request and token limits."""
        tightest: dict[str, tuple[Check, int]] = {}
        for check, value in zip(self.checks, self.values, strict=False):
            kind = check.kind
            if kind == "requests" or kind == "tokens":
                remaining = check.limit - value
                best = tightest.get(kind)
                if best is None or remaining < best[1]:
                    tightest[kind] = (check, remaining)
        out: list[tuple[bytes, bytes]] = []
        now = time.time()
        for kind, suffix in (("requests", b"requests"), ("tokens", b"tokens")):
            if kind in tightest:
                check, remaining = tightest[kind]
                out += [
                    (b"x-ratelimit-limit-" + suffix, b"%d" % check.limit),
                    (b"x-ratelimit-remaining-" + suffix, b"%d" % max(0, remaining)),
                    (b"x-ratelimit-reset-" + suffix, reset_text(check.reset_at - now).encode()),
                ]
        return out


def reset_text(seconds: float) -> str:
    """OpenAI's duration style: 450ms, 17s, 6m0s, 3h2m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _windows(now: float) -> dict[str, tuple[str, float]]:
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


REFUSALS = {
    "requests": ("requests", "rpm_limit_exceeded", "requests per minute"),
    "tokens": ("tokens", "tpm_limit_exceeded", "tokens per minute"),
    "input_tokens": ("tokens", "input_tpm_limit_exceeded", "input tokens per minute"),
    "output_tokens": ("tokens", "output_tpm_limit_exceeded", "output tokens per minute"),
    "parallel": ("requests", "max_parallel_requests_exceeded", "concurrent requests"),
    "budget": ("budget", "budget_exceeded", "USD"),
    "tool_calls": ("requests", "tool_rpm_limit_exceeded", "tool calls per minute"),
}


class QuotaExceeded(RateLimited):
    """429 whose ``type`` says which family of limit and ``code`` which limit."""

    def __init__(self, check: Check, current: int, headers: dict[str, str]) -> None:
        kind, code, unit = REFUSALS[check.kind]
        scope = f"{check.rule.label}" + (f" for model '{check.rule.model}'" if check.rule.model else "")
        if check.kind == "budget":
            spent, limit = current / MICROS, check.limit / MICROS
            period = "today" if check.rule.budget_duration == "1d" else "this month"
            message = f"Budget exceeded for {scope}: ${spent:.4f} of ${limit:.2f} spent {period}."
        else:
            message = (
                f"Rate limit reached for {scope}: {check.limit} {unit}; "
                f"used {current}, this request needs {check.amount}."
            )
        super().__init__(message, code=code, headers=headers)
        self.type = kind


# (kind, store kind, counter key, limit, window end in epoch seconds or 0, TTL slack in ms, rule)
_Step = tuple[str, str, str, int, float, int, QuotaRule]
_plans: dict[tuple[Any, ...], list[_Step]] = {}
_plans_minute = -1


def _plan(rules: tuple[QuotaRule, ...], model: str, now: float) -> list[_Step]:
    """The counters ``rules`` use for ``model`` in the current windows, built once per minute.

    Every window changes on a minute boundary (UTC days and months too), so a plan built in
    this minute holds for every request of the same rules and model until the next one."""
    global _plans_minute
    minute = int(now // 60)
    if minute != _plans_minute:
        _plans.clear()
        _plans_minute = minute
    prefix = settings.CACHE_KEY_PREFIX
    cache_key = (rules, model, prefix)
    plan = _plans.get(cache_key)
    if plan is not None:
        return plan
    windows = _windows(now)
    minute_id, minute_end = windows["minute"]
    plan = []
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
    if len(_plans) >= 10_000:  # many distinct keys in one minute: keep memory bounded
        _plans.clear()
    _plans[cache_key] = plan
    return plan


BUDGET_SLACK_MS = 3600 * 1000  # a budget outlives its window by an hour: late settlements still land


def counter_base(prefix: str, scope: str, model: str) -> str:
    return f"{prefix}:q:{scope}:{model or '*'}"


def budget_key(base: str, window_id: str) -> str:
    # "spend", not the "budget" integer counters of earlier versions: a hash under an old name
    # would be refused as a key of another type.
    return f"{base}:spend:{window_id}"


def _checks(rules: tuple[QuotaRule, ...], model: str, tokens_in: int, tokens_out: int, cost_micros: int) -> list[Check]:
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
    for kind, store, key, limit, end, slack, rule in _plan(rules, model, now):
        extra: int | bytes = 0
        if store == SLOTS:
            ttl = int(settings.QUOTA_PARALLEL_LEASE * 1000)
            extra = _process_tag + b"%d" % next(_slot_ids)
        else:
            # A window's counter lives until the window ends plus some slack (whole seconds: the
            # same TTL for every request of a second is encoded once, see command_bytes).
            ttl = math.ceil(end - now) * 1000 + slack
            if store == BUDGET:
                extra = int(now // 60)  # the minute the request started in: the records' watermark unit
        checks.append(Check(kind, key, limit, amounts[kind], ttl, end, rule, store, extra, now + ttl / 1000))
    return checks


# A settlement as the store takes it: (store kind, counter key, extra, delta, ttl_ms); for the
# concurrency set, extra is the members to release (a tuple) and delta minus their number.
Adjustment = tuple[str, str, Any, int, int]


class LocalCounters:
    """In-process counters with the same all-or-nothing semantics (one event loop, no await inside)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}

    def _get(self, key: str, now: float) -> int:
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > now else 0

    async def reserve(self, checks: list[Check]) -> tuple[int, int, list[int]]:
        now = time.monotonic()
        for index, check in enumerate(checks, start=1):
            current = self._get(check.key, now)
            if current + check.amount > check.limit:
                return index, current, []
        values = []
        for check in checks:
            value = self._get(check.key, now) + check.amount
            if check.store == SLOTS:
                # This process's own requests in flight: they end with it, and a count that
                # expired while requests are still in flight would admit past the limit.
                expires = math.inf
            else:
                expires = self._values.get(check.key, (0, 0.0))[1]
                if expires <= now:
                    expires = now + check.ttl_ms / 1000
            self._values[check.key] = (value, expires)
            values.append(value)
        if len(self._values) > 200_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        return 0, 0, values

    async def values(self, checks: list[Check]) -> list[int]:
        now = time.monotonic()
        return [self._get(check.key, now) for check in checks]

    async def settle(self, adjustments: list[Adjustment]) -> list[int]:
        now = time.monotonic()
        for store, key, _, delta, ttl_ms in adjustments:
            value, expires = self._values.get(key, (0, 0.0))
            if expires <= now:
                value, expires = 0, (math.inf if store == SLOTS else now + ttl_ms / 1000)
            self._values[key] = (max(0, value + delta), expires)
        return []


def _store_error(exc: BaseException) -> bool:
    """True for a failure to reach the store (no answer), not an answer that refused the call."""
    return not isinstance(exc, RedisReplyError | ResponseError)


class RedisCounters:
    """Counters in Redis. Reserves that arrive while a call is in flight wait and then go
    together in the next call, so under load one round trip serves many requests.

    Every call has ``QUOTA_STORE_TIMEOUT`` seconds and no retry; the first that gets no answer
    opens the breaker, and until a probe gets one, calls fail at once (``StoreUnavailable``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._scripts: dict[asyncio.AbstractEventLoop, ScriptConnection | None] = {}
        self._waiting: list[tuple[list[Check], asyncio.Future[tuple[int, int, list[int]]]]] = []
        self._sending = False
        self.breaker = StoreBreaker(
            "quota store (Redis)",
            retry_interval=settings.QUOTA_BREAKER_RETRY,
            probe=self._ping,
            on_close=self._caught_up,
        )
        # The requests in flight this process holds a concurrency slot for: key -> members.
        self._held: dict[str, set[bytes]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client: Any = self._clients.get(loop)
        if client is None:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            timeout = settings.QUOTA_STORE_TIMEOUT
            client = redis.Redis.from_url(
                self.url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
            )
            self._clients[loop] = client
        return client

    async def _script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a quota script on this loop's lean connection (redis-py for URLs it does not take)."""
        self.breaker.check()
        loop = asyncio.get_running_loop()
        try:
            if loop not in self._scripts:
                self._scripts[loop] = script_connection_for(self.url, timeout=settings.QUOTA_STORE_TIMEOUT)
            connection = self._scripts[loop]
            deadline = script is _RESERVE or script is _SETTLE
            if connection is not None:
                return await connection.evalsha(script, keys, args, deadline=deadline)
            if deadline:
                args = [0, *args]  # redis-py's connection does not learn the server's clock
            client = self._client()
            async with asyncio.timeout(settings.QUOTA_STORE_TIMEOUT):
                try:
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
                except ResponseError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                return await client.eval(script.source, len(keys), *keys, *args)
        except Exception as exc:
            if _store_error(exc):
                self.breaker.failed(exc)
            raise

    async def _ping(self) -> None:
        loop = asyncio.get_running_loop()
        connection = self._scripts.get(loop)
        if connection is None and loop not in self._scripts:
            connection = self._scripts[loop] = script_connection_for(self.url, timeout=settings.QUOTA_STORE_TIMEOUT)
        if connection is not None:
            await connection.call("PING")
        else:
            async with asyncio.timeout(settings.QUOTA_STORE_TIMEOUT):
                await self._client().ping()

    async def _caught_up(self) -> None:
        """The store answers again: send what was kept, renew the leases, reconcile from the records."""
        await _settle_batch.flush()
        await self._renew_leases()
        for reconcile in after_outage:
            task = asyncio.ensure_future(asyncio.to_thread(reconcile))
            _flushing_any.add(task)
            task.add_done_callback(_flushing_any.discard)

    async def reserve(self, checks: list[Check]) -> tuple[int, int, list[int]]:
        self.breaker.check()  # open: refused here, before any work
        future: asyncio.Future[tuple[int, int, list[int]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((checks, future))
        if not self._sending:
            self._sending = True
            task = asyncio.ensure_future(self._send())
            _flushing.add(task)
            task.add_done_callback(_flushing.discard)
        result = await future
        if not result[0]:
            for check in checks:
                if check.store == SLOTS:
                    self._hold(check.key, check.extra)  # type: ignore[arg-type]
        return result

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send_batch(batch)
        finally:
            self._sending = False

    async def _send_batch(self, batch: list[tuple[list[Check], asyncio.Future[tuple[int, int, list[int]]]]]) -> None:
        keys: list[str] = []
        args: list[Any] = [len(batch)]
        for checks, _ in batch:
            args += [len(checks), "".join([check.store for check in checks])]
            for check in checks:
                keys.append(check.key)
                args += [check.limit, check.amount, check.ttl_ms]
                if check.store != COUNTER:
                    args.append(check.extra)
        try:
            reply = [int(value) for value in await self._script(_RESERVE, keys, args)]
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        position = 0
        for checks, future in batch:
            failed = reply[position]
            result: tuple[int, int, list[int]]
            if failed:
                result = (failed, reply[position + 1], [])
                position += 2
            else:
                result = (0, 0, reply[position + 1 : position + 1 + len(checks)])
                position += 1 + len(checks)
            if not future.done():
                future.set_result(result)

    def _hold(self, key: str, member: bytes) -> None:
        self._held.setdefault(key, set()).add(member)
        task = self._heartbeat
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases_while_held())

    def released(self, key: str, member: bytes) -> None:
        members = self._held.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._held[key]

    async def _renew_leases_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(settings.QUOTA_PARALLEL_LEASE / 3)
            if not self.breaker.is_open:
                try:
                    await self._renew_leases()
                except Exception as exc:  # the breaker has opened; its probe renews them on closing
                    logger.warning("renewing concurrency leases failed: %s", exc)

    async def _renew_leases(self) -> None:
        if not self._held:
            return
        keys: list[str] = []
        lease_ms = int(settings.QUOTA_PARALLEL_LEASE * 1000)
        args: list[Any] = [lease_ms]
        sent = [(key, tuple(members)) for key, members in self._held.items()]
        for key, members in sent:
            keys.append(key)
            args += [len(members), *members]
        await self._script(_LEASE, keys, args)
        # A slot released while the renewal was on its way may have been added back by it (its
        # release reached Redis first): release it again, or it would hold a slot for a lease.
        stale: list[Adjustment] = []
        for key, members in sent:
            held = self._held.get(key, ())
            ended = tuple(member for member in members if member not in held)
            if ended:
                stale.append((SLOTS, key, ended, -len(ended), lease_ms))
        if stale:
            await self.settle(stale)

    async def values(self, checks: list[Check]) -> list[int]:
        if not checks:
            return []
        reply = await self._script(_USAGE, [check.key for check in checks], [])
        return [int(value) for value in reply]

    async def settle(self, adjustments: list[Adjustment]) -> list[int]:
        """Apply the adjustments; returns the (1-based) positions of those Redis refused."""
        args: list[Any] = ["".join([store for store, _, _, _, _ in adjustments])]
        for store, _, extra, delta, ttl_ms in adjustments:
            if store == SLOTS:
                members = extra if isinstance(extra, tuple) else (extra,)
                args += [len(members), ttl_ms, *members]
            elif store == BUDGET:
                args += [delta, ttl_ms, extra]
            else:
                args += [delta, ttl_ms]
        reply = await self._script(_SETTLE, [key for _, key, _, _, _ in adjustments], args)
        return [int(position) for position in reply or ()]


_counters: LocalCounters | RedisCounters | None = None


def counters() -> LocalCounters | RedisCounters:
    global _counters
    if _counters is None:
        _counters = RedisCounters(settings.QUOTA_REDIS_URL) if settings.QUOTA_REDIS_URL else LocalCounters()
    return _counters


def quota_store_state() -> dict[str, Any]:
    """The quota store as this process sees it, for readiness and metrics: where counters live,
    whether the breaker is open (and since when, and why)."""
    store = counters()
    if isinstance(store, LocalCounters):
        return {"store": "in-process", "open": False}
    breaker = store.breaker
    opened = breaker.opened_at
    return {
        "store": "redis",
        "open": opened is not None,
        "open_for_s": 0.0 if opened is None else round(time.monotonic() - opened, 3),
        "last_error": breaker.last_error if opened is not None else "",
        "openings": breaker.openings,
    }


def _store_failed(exc: Exception) -> None:
    """Apply QUOTA_FAIL_MODE when Redis cannot be reached: admit (open) or refuse with 503 (closed)."""
    if settings.QUOTA_FAIL_MODE == "closed":
        raise ServiceUnavailable(
            "Quotas cannot be checked right now (Redis unavailable); retry shortly.", code="quota_backend_unavailable"
        ) from exc
    if not isinstance(exc, StoreUnavailable):  # the breaker said so once when it opened
        logger.warning("quota store unavailable, admitting without limits (QUOTA_FAIL_MODE=open): %s", exc)


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
    checks = [check for rule in rules for check in _checks((rule,), rule.model, 0, 0, 0)]
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


async def quota_reserve(
    rules: tuple[QuotaRule, ...], model: str, *, tokens_in: int, tokens_out: int, cost: Decimal
) -> Reservation:
    """Check every limit that applies and reserve on all of them at once, or raise ``QuotaExceeded``."""
    checks = _checks(rules, model, tokens_in, tokens_out, int(cost * MICROS))
    if not checks:
        return Reservation()
    try:
        failed, current, values = await counters().reserve(checks)
    except Exception as exc:  # redis.RedisError, OSError: the store is unreachable
        if isinstance(exc, PlatformError):
            raise
        _store_failed(exc)
        # Admitted without a reservation; what it uses is charged when it is settled.
        return Reservation(checks, [], unreserved=True)
    if failed:
        check = checks[failed - 1]
        retry = max(1, math.ceil(check.reset_at - time.time())) if check.reset_at else 1
        headers = {"Retry-After": str(retry)}
        if check.kind in ("requests", "tokens"):
            refused = Reservation([check], [current])
            headers.update({name.decode(): value.decode() for name, value in refused.headers()})
        raise QuotaExceeded(check, current, headers)
    return Reservation(checks, values)


def _tool_call_checks(rules: tuple[QuotaRule, ...]) -> list[Check]:
    now = time.time()
    minute = int(now // 60)
    ttl = int(((minute + 1) * 60 - now) * 1000) + 5000
    return [
        Check(
            "tool_calls",
            f"{settings.CACHE_KEY_PREFIX}:q:{rule.scope}:*:tool_calls:m{minute}",
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


async def tool_call_quota_reserve(rules: tuple[QuotaRule, ...]) -> None:
    """Count one MCP tool call against every tool-call limit of ``rules`` (those for all
    models), or raise ``QuotaExceeded`` and count nothing. A tool call holds no concurrency
    slot and has no cost, so there is nothing to settle afterwards."""
    checks = _tool_call_checks(rules)
    if not checks:
        return
    try:
        failed, current, _ = await counters().reserve(checks)
    except Exception as exc:  # redis.RedisError, OSError: the store is unreachable
        if isinstance(exc, PlatformError):
            raise
        _store_failed(exc)
        # Admitted uncounted: the call is counted when the store is back, if its minute still runs.
        _settle_batch.add([(check.store, check.key, check.extra, check.amount, check.expires_at) for check in checks])
        return
    if failed:
        check = checks[failed - 1]
        raise QuotaExceeded(check, current, {"Retry-After": str(max(1, math.ceil(check.reset_at - time.time())))})


def quota_settle(reservation: Reservation, *, tokens_in: int, tokens_out: int, cost: Decimal) -> None:
    """Replace the reservation with what was really used, and release the concurrency slot.

    A request admitted while the store was unreachable reserved nothing: all it used is
    charged instead (the batch keeps it until the store answers again), so the counters end
    where the usage records say. Only queues the adjustment (``SettleBatch`` sends it); it
    never awaits, so it also runs to the end in the cleanup of a cancelled (disconnected) request."""
    if reservation.settled or not reservation.checks:
        return
    reservation.settled = True
    actual = {
        "requests": None,
        "tokens": tokens_in + tokens_out,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "budget": int(cost * MICROS),
    }
    unreserved = reservation.unreserved
    store = _counters
    adjustments: list[Pending] = []
    for check in reservation.checks:
        if check.store == SLOTS:
            if not unreserved:
                # The lease runs from its last renewal: the member is there for one more lease at most.
                adjustments.append((SLOTS, check.key, check.extra, -1, time.time() + check.ttl_ms / 1000))
                if isinstance(store, RedisCounters):
                    store.released(check.key, check.extra)  # type: ignore[arg-type]
            continue
        used = actual[check.kind]
        if unreserved:
            charge = check.amount if used is None else used
            if charge:
                adjustments.append((check.store, check.key, check.extra, charge, check.expires_at))
        elif used is not None and used != check.amount:
            adjustments.append((check.store, check.key, check.extra, used - check.amount, check.expires_at))
    if adjustments:
        _settle_batch.add(adjustments)


# A settlement waiting to be sent: (store kind, counter key, extra, delta, epoch seconds when the counter ends).
Pending = tuple[str, str, int | bytes | str, int, float]


class SettleBatch:
    """Folds the settlements of many requests into one store call every few milliseconds.

    Each request would otherwise pay a second Redis round trip after its response; batched,
    the cost is shared. A released concurrency slot or a refunded reservation becomes
    visible to other requests at most ``SETTLE_INTERVAL`` later.

    A counter Redis cannot change (it holds something else, or would overflow) is refused
    alone; the others are settled, and the refused adjustment becomes a dead letter
    (``manage.py dead_letters``; counted in ``llmp_writer_dead_letters_total``). While
    Redis is unreachable, adjustments are kept (added up per counter, at most
    ``MAX_PENDING`` counters) and sent when its breaker closes (or every
    ``SETTLE_RETRY_INTERVAL``); one whose counter has ended meanwhile is dropped, there is
    nothing left to correct.
    """

    name = "settlements"
    MAX_PENDING = 100_000

    def __init__(self) -> None:
        # (store kind, key, extra) -> [delta, epoch seconds when the counter ends]
        self._pending: dict[tuple[str, str, int | bytes | str], list[Any]] = {}
        # The loop a flush is scheduled on; a flush scheduled on a loop that has since closed
        # (one loop per test, say) must not block every later one.
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self.dead_letters = DeadLetterFile(self.name)

    def add(self, adjustments: list[Pending]) -> None:
        self._merge(adjustments)
        loop = asyncio.get_running_loop()
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_later(SETTLE_INTERVAL, self._flush_soon)

    def _merge(self, adjustments: list[Pending]) -> None:
        dropped = 0
        for store, key, extra, delta, expires_at in adjustments:
            entry = self._pending.get((store, key, extra))
            if entry is None:
                if len(self._pending) >= self.MAX_PENDING:
                    dropped += 1
                    continue
                entry = self._pending[(store, key, extra)] = [0, expires_at]
            entry[0] += delta
            entry[1] = max(entry[1], expires_at)
        if dropped:
            metrics.writer_dropped_observe(self.name, "backlog", dropped)
            logger.error("quota settlements: %d dropped, Redis unreachable too long", dropped)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self.flush())
        _flushing.add(task)
        task.add_done_callback(_flushing.discard)

    async def flush(self) -> None:
        self._scheduled = None
        pending, self._pending = self._pending, {}
        now = time.time()
        adjustments: list[Adjustment] = []
        releases: dict[str, tuple[list[Any], float]] = {}  # key -> members, latest end: one ZREM per key
        for (store, key, extra), (delta, expires_at) in pending.items():
            if not delta or expires_at <= now:
                continue
            if store == SLOTS:
                members, ends = releases.get(key, ([], 0.0))
                members.extend(extra if isinstance(extra, tuple) else (extra,))
                releases[key] = (members, max(ends, expires_at))
            else:
                adjustments.append((store, key, extra, delta, int((expires_at - now) * 1000)))
        for key, (members, ends) in releases.items():
            adjustments.append((SLOTS, key, tuple(members), -len(members), int((ends - now) * 1000)))
        if not adjustments:
            return
        unsent, refused = await _settle_isolating(adjustments)
        if refused:
            self._dead_letter(refused)
        if unsent:
            now = time.time()
            self._merge([(store, key, extra, delta, now + ttl / 1000) for store, key, extra, delta, ttl in unsent])
            loop = asyncio.get_running_loop()
            if self._scheduled is not loop:
                self._scheduled = loop
                loop.call_later(SETTLE_RETRY_INTERVAL, self._flush_soon)

    def _dead_letter(self, refused: list[tuple[Adjustment, str]]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = [
            record_line(
                {"time": now, "writer": self.name, "error": error, "attempts": 1, "row": _letter_row(adjustment)}
            )
            for adjustment, error in refused
        ]
        try:
            stored = self.dead_letters.append(lines, max_bytes=settings.DEAD_LETTER_MAX_BYTES)
        except OSError:
            logger.exception("quota settlements: the dead-letter file cannot be written")
            stored = 0
        metrics.writer_dead_letter_observe(self.name, stored)
        if stored < len(lines):
            metrics.writer_dropped_observe(self.name, "dead_letter_full", len(lines) - stored)
        logger.error(
            "quota settlements: Redis refused %d counters (e.g. %s); kept as dead letters", len(refused), refused[0][1]
        )

    def replay(self) -> ReplayResult:
        """Send the dead letters again; what Redis refuses stays, one whose window has ended is dropped."""
        if isinstance(counters(), LocalCounters):
            # In-process counters belong to the server processes: nothing here to settle into.
            held = self.dead_letters.count()
            return ReplayResult(self.name, records=held, kept=held)
        return asyncio.run(self._replay())

    async def _replay(self) -> ReplayResult:
        result = ReplayResult(self.name)
        now = dt.datetime.now(dt.UTC)
        for path in self.dead_letters.set_aside():
            kept: list[bytes] = []
            live: list[Adjustment] = []
            origin: dict[int, dict[str, Any]] = {}  # id of an adjustment -> its record
            for record in self.dead_letters.records(path):
                result.records += 1
                try:
                    # [key, delta, ttl_ms, store kind, extra]; letters of earlier versions end after ttl_ms.
                    row = record["row"]
                    key, delta, ttl_ms = row[:3]
                    store, extra = (str(row[3]), row[4]) if len(row) >= 5 else (COUNTER, 0)
                    if isinstance(extra, list):
                        extra = tuple(extra)
                    ends = dt.datetime.fromisoformat(record["time"]) + dt.timedelta(milliseconds=int(ttl_ms))
                except (KeyError, TypeError, ValueError):
                    result.unreadable += 1
                    kept.append(record_line(record))
                    continue
                if ends <= now:
                    result.expired += 1  # the counter ended with its window: nothing left to settle
                    continue
                adjustment: Adjustment = (
                    store,
                    str(key),
                    extra,
                    int(delta),
                    max(1, int((ends - now).total_seconds() * 1000)),
                )
                live.append(adjustment)
                origin[id(adjustment)] = record
            unsent, refused = await _settle_isolating(live) if live else ([], [])
            result.written += len(live) - len(unsent) - len(refused)
            result.refused += len(refused)
            result.kept += len(kept) + len(unsent)
            kept += [record_line(origin[id(adjustment)]) for adjustment in unsent]
            for adjustment, error in refused:
                record = origin[id(adjustment)]
                kept.append(record_line(record | {"error": error, "attempts": int(record.get("attempts", 1)) + 1}))
            self.dead_letters.append(kept, max_bytes=1 << 62)  # accepted once already: never dropped here
            path.unlink()
        return result


def _letter_row(adjustment: Adjustment) -> list[Any]:
    """A refused adjustment as its dead letter keeps it (JSON): key, delta, ttl_ms, store kind, extra."""
    store, key, extra, delta, ttl_ms = adjustment
    if isinstance(extra, tuple):
        extra = [member.decode() if isinstance(member, bytes) else member for member in extra]
    return [key, delta, ttl_ms, store, extra.decode() if isinstance(extra, bytes) else extra]


async def _settle_isolating(
    adjustments: list[Adjustment],
) -> tuple[list[Adjustment], list[tuple[Adjustment, str]]]:
    """Settle; returns what could not be sent (Redis unreachable) and what Redis refused, with why."""
    try:
        refused_at = await counters().settle(adjustments)
    except (RedisReplyError, ResponseError) as exc:
        # Redis answered, but refused the call as a whole (the script settles nothing then):
        # halve it until the adjustment it refuses stands alone.
        if len(adjustments) == 1:
            return [], [(adjustments[0], f"{type(exc).__name__}: {exc}"[:500])]
        middle = len(adjustments) // 2
        first, second = await _settle_isolating(adjustments[:middle]), await _settle_isolating(adjustments[middle:])
        return first[0] + second[0], first[1] + second[1]
    except Exception as exc:  # unreachable, timed out: keep for the next attempt
        if not isinstance(exc, StoreUnavailable):
            logger.warning("quota settle failed (%s); %d counters kept to send again", exc, len(adjustments))
        return adjustments, []
    return [], [
        (adjustments[position - 1], "refused by Redis (the counter holds a non-integer or would overflow)")
        for position in refused_at
    ]


SETTLE_INTERVAL = 0.02
SETTLE_RETRY_INTERVAL = 1.0
_settle_batch = SettleBatch()
settle_batch = _settle_batch  # by name in settings.BATCH_WRITERS
_flushing: set[asyncio.Task[None]] = set()
_flushing_any: set[asyncio.Future[Any]] = set()  # catch-up work after an outage, kept referenced
# Run in a thread each time the store answers again after an outage: the routing app adds
# the reconcile from its usage records (``routing.quota_reconcile``), which tenants cannot read.
after_outage: list[Callable[[], object]] = []


async def quota_settle_flush() -> None:
    """Send every settlement still waiting (for a draining server, before it exits; bound it
    with ``asyncio.timeout``)."""
    if _flushing:
        await asyncio.wait(list(_flushing))
    await _settle_batch.flush()
    if _settle_batch._pending:
        # Lost with this process: the budgets get them back from the usage records at the next
        # reconcile pass past them; per-minute counters and leases heal with their windows.
        logger.warning(
            "quota settlements: %d counters not sent before exit (quota store unreachable)", len(_settle_batch._pending)
        )
