"""Budget counters set from the usage records, which are the truth: after an outage, a dead process or a lost Redis.

A budget hash in Redis holds the spend of the requests started in each minute, and their
total ``t`` that the limit is checked against (see ``tenants.quota``). A pass takes a
watermark minute ``W`` (``QUOTA_RECONCILE_LAG`` ago: every request started before it has
ended and been recorded) and, for every budget of the current windows, in one atomic step:
``r`` = the spend the records hold for requests started in the window before ``W``; the
minutes before ``W`` are dropped; ``t`` = ``r`` + the minutes from ``W`` on; ``w`` = ``W``.

Nothing is counted twice: a settlement that reaches Redis late (kept through an outage) for
a request started before the watermark is dropped by the settle script, the records already
hold it; one for a later request lands in its minute, which the next pass replaces by the
records once the watermark has passed it. What was wrong before the watermark (spend a dead
process admitted while Redis was away, reservations it never settled, a reserve that Redis
ran after the caller had given up on it, a Redis that lost its data) is corrected at each
pass. Spend admitted during an outage by processes that live on is charged by them as soon
as Redis answers again (their settlement batch keeps it), without waiting for the lag.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import DecimalField, ExpressionWrapper, F, Sum, Value
from django.db.models.functions import Floor

from routing.models import RequestLog
from tenants.models import Quota
from tenants.quota import BUDGET_SLACK_MS, MICROS, budget_key, counter_base, quota_windows

logger = logging.getLogger(__name__)

# KEYS: budget hashes. ARGV: three values for each: the watermark minute, the records' spend
# before it (micro-dollars), the TTL in ms. A pass with an older watermark than the hash has
# changes nothing. Returns each hash's total before and after, flattened.
RECONCILE_LUA = """
local out = {}
for i = 1, #KEYS do
  local key, p = KEYS[i], 3 * i - 2
  local watermark, recorded = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
  local before = tonumber(redis.call('HGET', key, 't') or 0)
  local after = before
  if watermark >= tonumber(redis.call('HGET', key, 'w') or -1) then
    after = recorded
    local fields = redis.call('HGETALL', key)
    for j = 1, #fields, 2 do
      local name = fields[j]
      if name ~= 't' and name ~= 'r' and name ~= 'w' then
        if tonumber(name) < watermark then
          redis.call('HDEL', key, name)
        else
          after = after + tonumber(fields[j + 1])
        end
      end
    end
    redis.call('HSET', key, 'w', watermark, 'r', recorded, 't', after)
    redis.call('PEXPIRE', key, ARGV[p + 2])
  end
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
"""

_CHUNK = 500  # budgets per script call: keeps each call short for the requests queued behind it
_LOCK_MS = 30_000


@dataclass
class ReconcileResult:
    store: str = "redis"
    budgets: int = 0  # budget counters set from the records
    changed: int = 0  # of those, how many held another total
    skipped: int = 0  # budgets whose window reaches back past USAGE_RETENTION_DAYS: records incomplete
    difference_micros: int = 0  # sum of (after - before): positive = spend that had not been charged
    watermark: dt.datetime | None = None

    def summary(self) -> str:
        if self.store != "redis":
            return "quota counters are kept in process (no QUOTA_REDIS_URL or REDIS_URL): nothing to reconcile"
        skipped = ""
        if self.skipped:
            skipped = f"; {self.skipped} left as they are (their window began before USAGE_RETENTION_DAYS)"
        return (
            f"{self.budgets} budget counters set from the usage records up to {self.watermark:%Y-%m-%d %H:%M} UTC; "
            f"{self.changed} changed, by {self.difference_micros / MICROS:+.6f} USD in all{skipped}"
        )


def _recorded_micros(field: str, ids: set[int], start: dt.datetime, end: dt.datetime) -> dict[tuple[int, str], int]:
    """Spend per (scope id, requested model) of the requests started in [start, end), in micro-dollars.

    Each record is truncated to micro-dollars on its own, as its settlement was; the small
    addend keeps a binary float (SQLite) from flooring 2.0 to 1.999... (a cost has at most 8
    decimals, so the true fraction is at most 0.99)."""
    if not ids or start >= end:
        return {}
    micros = ExpressionWrapper(
        Floor(F("cost_usd") * Value(MICROS) + Value(Decimal("0.000001"))),
        output_field=DecimalField(max_digits=20, decimal_places=0),
    )
    rows = (
        RequestLog.objects.filter(**{f"{field}__in": ids}, created_at__gte=start, created_at__lt=end)
        .values_list(field, "model_requested")
        .annotate(spent=Sum(micros))
        .order_by()
    )
    return {(scope_id, model): int(spent or 0) for scope_id, model, spent in rows}


def quota_reconcile(*, lag: float | None = None, now: float | None = None, client: Any = None) -> ReconcileResult:
    """Set every budget counter of the current windows from the usage records (see the module)."""
    if not settings.QUOTA_REDIS_URL:
        return ReconcileResult(store="in-process")
    now = time.time() if now is None else now
    lag = settings.QUOTA_RECONCILE_LAG if lag is None else lag
    watermark_minute = int((now - lag) // 60)
    watermark = dt.datetime.fromtimestamp(watermark_minute * 60, dt.UTC)
    windows = quota_windows(now)
    result = ReconcileResult(watermark=watermark)

    budgets = Quota.objects.filter(max_budget__isnull=False).values_list(
        "tenant_id", "api_key_id", "model", "budget_duration"
    )
    by_window: dict[str, list[tuple[str, int, str]]] = defaultdict(list)  # duration -> (field, id, model)
    for tenant_id, key_id, model, duration in budgets:
        field, scope_id = ("api_key_id", key_id) if key_id else ("tenant_id", tenant_id)
        by_window[duration].append((field, scope_id, model))

    keys: list[str] = []
    args: list[int] = []
    prefix = settings.CACHE_KEY_PREFIX
    for duration, scopes in by_window.items():
        window_id, window_end = windows[duration]
        start = _window_start(duration, now)
        retention = settings.USAGE_RETENTION_DAYS
        if retention and start < dt.datetime.fromtimestamp(now, dt.UTC) - dt.timedelta(days=retention):
            # The oldest records of this window are pruned already: their sum would undercount.
            result.skipped += len(set(scopes))
            continue
        # A watermark before the window starts: no records yet, only the minutes (all kept).
        minute = max(watermark_minute, int(start.timestamp() // 60))
        end = dt.datetime.fromtimestamp(minute * 60, dt.UTC)
        ttl_ms = int((window_end - now) * 1000) + BUDGET_SLACK_MS
        recorded: dict[str, dict[tuple[int, str], int]] = {}
        for field in ("tenant_id", "api_key_id"):
            ids = {scope_id for f, scope_id, _ in scopes if f == field}
            recorded[field] = _recorded_micros(field, ids, start, end)
        for field, scope_id, model in sorted(set(scopes)):
            spent = sum(
                micros
                for (owner, requested), micros in recorded[field].items()
                if owner == scope_id and (not model or requested == model)
            )
            scope = f"key:{scope_id}" if field == "api_key_id" else f"tenant:{scope_id}"
            keys.append(budget_key(counter_base(prefix, scope, model), window_id))
            args += [minute, spent, ttl_ms]

    if not keys:
        return result
    own_client = client is None
    if own_client:
        import redis

        client = redis.Redis.from_url(settings.QUOTA_REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
    try:
        script = client.register_script(RECONCILE_LUA)
        for index in range(0, len(keys), _CHUNK):
            reply = script(keys=keys[index : index + _CHUNK], args=args[3 * index : 3 * (index + _CHUNK)])
            for before, after in zip(reply[0::2], reply[1::2], strict=True):
                result.budgets += 1
                if int(before) != int(after):
                    result.changed += 1
                    result.difference_micros += int(after) - int(before)
    finally:
        if own_client:
            client.close()
    if result.changed:
        logger.warning("quota reconcile: %s", result.summary())
    return result


def _window_start(duration: str, now: float) -> dt.datetime:
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    if duration == "1d":
        return dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC)
    return dt.datetime(today.year, today.month, 1, tzinfo=dt.UTC)


def quota_reconcile_after_outage() -> ReconcileResult | None:
    """One pass after the quota store answers again, by one process of those that saw the outage.

    Runs on a thread (it reads the database): the server processes whose breakers close
    together race for a short lock in Redis, and the winner reconciles."""
    import redis

    try:
        client = redis.Redis.from_url(settings.QUOTA_REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
        try:
            if not client.set(f"{settings.CACHE_KEY_PREFIX}:q:reconcile-lock", 1, nx=True, px=_LOCK_MS):
                return None
            return quota_reconcile(client=client)
        finally:
            client.close()
    except Exception:
        logger.exception("quota reconcile after the outage failed; the scheduled pass will retry")
        return None
    finally:
        connection.close()  # this thread's own connection: the pool thread may never run Django again
