"""Quotas on the hot path: one atomic check-and-reserve across all matching limits, then settle.

Counters live in Redis when ``REDIS_URL`` is set, so every server process counts against
the same numbers; one Lua script checks every limit and reserves on all of them, or on
none. Without Redis (the embedded mode) the same logic runs on in-process counters.
Windows are fixed and aligned to the clock (UTC): requests and tokens per minute, spend
per day or calendar month. Concurrency counts requests in flight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from redis.exceptions import ResponseError

from audit.dead_letters import DeadLetterFile, record_line
from audit.writer import ReplayResult
from observability import metrics
from tenants.errors import PlatformError, RateLimited, ServiceUnavailable
from tenants.quota_redis import RedisReplyError, Script, ScriptConnection, script_connection_for

logger = logging.getLogger(__name__)

MICROS = 1_000_000  # spend is counted in micro-dollars so Redis can INCRBY integers
PARALLEL_TTL_MS = 15 * 60 * 1000  # a crashed process's in-flight count heals after this

# Reserves for several requests in one call. ARGV[1] = number of requests; then, per request,
# its number of counters n followed by n triples (limit, increment, ttl_ms); KEYS are the
# counters in the same order. Each request is all or nothing, independently of the others.
# Per request the reply holds: failing index (1-based) and that counter's value, or 0
# followed by the counters' new values.
RESERVE_LUA = """
local out = {}
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  -- Increment first and undo on a refusal: one call per counter when the request fits
  -- (the usual case) instead of a read and then a write. Nothing else runs in between.
  local values, failed, seen = {}, 0, 0
  for i = 0, n - 1 do
    local amount = tonumber(ARGV[a + 3 * i + 1])
    local value = redis.call('INCRBY', KEYS[k + i], amount)
    -- value == amount: the counter was just created (or was at zero), so give it its window.
    if value == amount then
      redis.call('PEXPIRE', KEYS[k + i], ARGV[a + 3 * i + 2])
    end
    values[i + 1] = value
    if value > tonumber(ARGV[a + 3 * i]) then
      failed, seen = i + 1, value - amount
      break
    end
  end
  if failed > 0 then
    for i = 0, failed - 1 do
      redis.call('DECRBY', KEYS[k + i], ARGV[a + 3 * i + 1])
    end
    out[#out + 1] = failed
    out[#out + 1] = seen
  else
    out[#out + 1] = 0
    for i = 1, n do
      out[#out + 1] = values[i]
    end
  end
  k, a = k + n, a + 3 * n
end
return out
"""

# KEYS: counters. ARGV: delta, ttl_ms for each; a counter never drops below zero. Each counter
# is settled on its own (pcall): one the script cannot change (a key holding something else,
# an overflow) is left as it is and its position returned, and every other one is settled.
SETTLE_LUA = """
local refused = {}
for i = 1, #KEYS do
  local value = redis.pcall('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if type(value) == 'table' then
    refused[#refused + 1] = i
  else
    if value < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end
  end
end
return refused
"""

_RESERVE, _SETTLE = Script(RESERVE_LUA), Script(SETTLE_LUA)


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
    kind: str  # requests, tokens, input_tokens, output_tokens, parallel, budget
    key: str
    limit: int
    amount: int
    ttl_ms: int
    reset_at: float  # epoch seconds when the window ends (0 for parallel)
    rule: QuotaRule


@dataclass(slots=True)
class Reservation:
    checks: list[Check] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    settled: bool = False

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


# (kind, counter key, limit, window end in epoch seconds or 0, TTL slack in ms or a fixed TTL, rule)
_Step = tuple[str, str, int, float, int, QuotaRule]
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
        base = f"{prefix}:q:{rule.scope}:{rule.model or '*'}"
        for kind, limit in (
            ("requests", rule.rpm),
            ("tokens", rule.tpm),
            ("input_tokens", rule.input_tpm),
            ("output_tokens", rule.output_tpm),
        ):
            if limit is not None:
                plan.append((kind, f"{base}:{kind}:{minute_id}", limit, minute_end, 5000, rule))
        if rule.parallel is not None:
            plan.append(("parallel", f"{base}:parallel", rule.parallel, 0.0, PARALLEL_TTL_MS, rule))
        if rule.budget_micros is not None:
            window_id, window_end = windows[rule.budget_duration]
            plan.append(("budget", f"{base}:budget:{window_id}", rule.budget_micros, window_end, 3600 * 1000, rule))
    if len(_plans) >= 10_000:  # many distinct keys in one minute: keep memory bounded
        _plans.clear()
    _plans[cache_key] = plan
    return plan


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
    return [
        # A window's counter lives until the window ends plus some slack; the in-flight count
        # has a fixed TTL that heals what a crashed process held.
        Check(kind, key, limit, amounts[kind], int((end - now) * 1000) + ttl if end else ttl, end, rule)
        for kind, key, limit, end, ttl, rule in _plan(rules, model, now)
    ]


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
            expires = self._values.get(check.key, (0, 0.0))[1]
            self._values[check.key] = (value, expires if expires > now else now + check.ttl_ms / 1000)
            values.append(value)
        if len(self._values) > 200_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        return 0, 0, values

    async def values(self, keys: list[str]) -> list[int]:
        now = time.monotonic()
        return [self._get(key, now) for key in keys]

    async def settle(self, adjustments: list[tuple[str, int, int]]) -> list[int]:
        now = time.monotonic()
        for key, delta, ttl_ms in adjustments:
            value, expires = self._values.get(key, (0, 0.0))
            if expires <= now:
                value, expires = 0, now + ttl_ms / 1000
            self._values[key] = (max(0, value + delta), expires)
        return []


class RedisCounters:
    """Counters in Redis. Reserves that arrive while a call is in flight wait and then go
    together in the next call, so under load one round trip serves many requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._scripts: dict[asyncio.AbstractEventLoop, ScriptConnection | None] = {}
        self._waiting: list[tuple[list[Check], asyncio.Future[tuple[int, int, list[int]]]]] = []
        self._sending = False

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client: Any = self._clients.get(loop)
        if client is None:
            import redis.asyncio as redis

            client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            client.reserve_script = client.register_script(RESERVE_LUA)
            client.settle_script = client.register_script(SETTLE_LUA)
            self._clients[loop] = client
        return client

    async def _script(self, script: Script, keys: list[str], args: list[int]) -> Any:
        """Run a quota script on this loop's lean connection (redis-py for URLs it does not take)."""
        loop = asyncio.get_running_loop()
        if loop not in self._scripts:
            self._scripts[loop] = script_connection_for(self.url, timeout=1.0)
        connection = self._scripts[loop]
        if connection is not None:
            return await connection.evalsha(script, keys, args)
        client = self._client()
        redis_script = client.reserve_script if script is _RESERVE else client.settle_script
        return await redis_script(keys=keys, args=args)

    async def reserve(self, checks: list[Check]) -> tuple[int, int, list[int]]:
        future: asyncio.Future[tuple[int, int, list[int]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((checks, future))
        if not self._sending:
            self._sending = True
            task = asyncio.ensure_future(self._send())
            _flushing.add(task)
            task.add_done_callback(_flushing.discard)
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send_batch(batch)
        finally:
            self._sending = False

    async def _send_batch(self, batch: list[tuple[list[Check], asyncio.Future[tuple[int, int, list[int]]]]]) -> None:
        keys: list[str] = []
        args: list[int] = [len(batch)]
        for checks, _ in batch:
            args.append(len(checks))
            for check in checks:
                keys.append(check.key)
                args += [check.limit, check.amount, check.ttl_ms]
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

    async def values(self, keys: list[str]) -> list[int]:
        return [int(value or 0) for value in await self._client().mget(keys)] if keys else []

    async def settle(self, adjustments: list[tuple[str, int, int]]) -> list[int]:
        """Apply the adjustments; returns the (1-based) positions of those Redis refused."""
        args: list[int] = []
        for _, delta, ttl_ms in adjustments:
            args += [delta, ttl_ms]
        reply = await self._script(_SETTLE, [key for key, _, _ in adjustments], args)
        return [int(position) for position in reply or ()]


_counters: LocalCounters | RedisCounters | None = None


def counters() -> LocalCounters | RedisCounters:
    global _counters
    if _counters is None:
        _counters = RedisCounters(settings.REDIS_URL) if settings.REDIS_URL else LocalCounters()
    return _counters


def _store_failed(exc: Exception) -> None:
    """Apply QUOTA_FAIL_MODE when Redis cannot be reached: admit (open) or refuse with 503 (closed)."""
    if settings.QUOTA_FAIL_MODE == "closed":
        raise ServiceUnavailable(
            "Quotas cannot be checked right now (Redis unavailable); retry shortly.", code="quota_backend_unavailable"
        ) from exc
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
        values = await counters().values([check.key for check in checks])
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
        return Reservation()
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
        return
    if failed:
        check = checks[failed - 1]
        raise QuotaExceeded(check, current, {"Retry-After": str(max(1, math.ceil(check.reset_at - time.time())))})


def quota_settle(reservation: Reservation, *, tokens_in: int, tokens_out: int, cost: Decimal) -> None:
    """Replace the reservation with what was really used, and release the concurrency slot.

    Only queues the adjustment (``SettleBatch`` sends it); it never awaits, so it also runs
    to the end in the cleanup of a cancelled (disconnected) request."""
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
    adjustments = []
    for check in reservation.checks:
        if check.kind == "parallel":
            adjustments.append((check.key, -1, check.ttl_ms))
            continue
        used = actual[check.kind]
        if used is not None and used != check.amount:
            adjustments.append((check.key, used - check.amount, check.ttl_ms))
    if adjustments:
        _settle_batch.add(adjustments)


class SettleBatch:
    """Folds the settlements of many requests into one store call every few milliseconds.

    Each request would otherwise pay a second Redis round trip after its response; batched,
    the cost is shared. A released concurrency slot or a refunded reservation becomes
    visible to other requests at most ``SETTLE_INTERVAL`` later.

    A counter Redis cannot change (it holds something else, or would overflow) is refused
    alone; the others are settled, and the refused adjustment becomes a dead letter
    (``manage.py dead_letters``; counted in ``llmp_writer_dead_letters_total``). While
    Redis is unreachable, adjustments are kept (added up per counter, at most
    ``MAX_PENDING`` counters) and sent again every ``SETTLE_RETRY_INTERVAL``.
    """

    name = "settlements"
    MAX_PENDING = 100_000

    def __init__(self) -> None:
        self._pending: dict[str, list[int]] = {}  # key -> [delta, ttl_ms]
        # The loop a flush is scheduled on; a flush scheduled on a loop that has since closed
        # (one loop per test, say) must not block every later one.
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self.dead_letters = DeadLetterFile(self.name)

    def add(self, adjustments: list[tuple[str, int, int]]) -> None:
        self._merge(adjustments)
        loop = asyncio.get_running_loop()
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_later(SETTLE_INTERVAL, self._flush_soon)

    def _merge(self, adjustments: list[tuple[str, int, int]]) -> None:
        dropped = 0
        for key, delta, ttl_ms in adjustments:
            entry = self._pending.get(key)
            if entry is None:
                if len(self._pending) >= self.MAX_PENDING:
                    dropped += 1
                    continue
                entry = self._pending[key] = [0, ttl_ms]
            entry[0] += delta
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
        adjustments = [(key, delta, ttl) for key, (delta, ttl) in pending.items() if delta]
        if not adjustments:
            return
        unsent, refused = await _settle_isolating(adjustments)
        if refused:
            self._dead_letter(refused)
        if unsent:
            self._merge(unsent)
            loop = asyncio.get_running_loop()
            if self._scheduled is not loop:
                self._scheduled = loop
                loop.call_later(SETTLE_RETRY_INTERVAL, self._flush_soon)

    def _dead_letter(self, refused: list[tuple[tuple[str, int, int], str]]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = [
            record_line({"time": now, "writer": self.name, "error": error, "attempts": 1, "row": list(adjustment)})
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
            live: list[tuple[str, int, int]] = []
            origin: dict[int, dict[str, Any]] = {}  # id of an adjustment -> its record
            for record in self.dead_letters.records(path):
                result.records += 1
                try:
                    key, delta, ttl_ms = record["row"]
                    ends = dt.datetime.fromisoformat(record["time"]) + dt.timedelta(milliseconds=int(ttl_ms))
                except (KeyError, TypeError, ValueError):
                    result.unreadable += 1
                    kept.append(record_line(record))
                    continue
                if ends <= now:
                    result.expired += 1  # the counter ended with its window: nothing left to settle
                    continue
                adjustment = (str(key), int(delta), max(1, int((ends - now).total_seconds() * 1000)))
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


async def _settle_isolating(
    adjustments: list[tuple[str, int, int]],
) -> tuple[list[tuple[str, int, int]], list[tuple[tuple[str, int, int], str]]]:
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


async def quota_settle_flush() -> None:
    """Send every settlement still waiting (for a draining server, before it exits; bound it
    with ``asyncio.timeout``)."""
    if _flushing:
        await asyncio.wait(list(_flushing))
    await _settle_batch.flush()
