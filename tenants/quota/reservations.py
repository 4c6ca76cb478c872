"""The quota hot path: one atomic check-and-reserve across all matching limits, then settle what was used.

``quota_reserve`` turns the rules into checks (``checks``), reserves on all of them or on
none (``counters``), and refuses with ``QuotaExceeded`` (``refusals``). ``quota_settle``
replaces the reservation with what the request really used and releases its concurrency
slot; it only queues the adjustment for the settlement batch (``settlements``).

The store is reached with a short timeout and no retries, behind a circuit breaker: while
it is open, requests follow ``QUOTA_FAIL_MODE`` at once. What a request admitted that way
used is charged when the store is back (the settlement batch keeps it meanwhile).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from core.errors import PlatformError, ServiceUnavailable
from tenants.quota.breaker import StoreUnavailable
from tenants.quota.checks import MICROS, Check, QuotaRule, quota_checks
from tenants.quota.redis_counters import RedisCounters, Reserved
from tenants.quota.refusals import QuotaExceeded, reset_text, retry_after
from tenants.quota.scripts import SLOTS
from tenants.quota.settlements import Pending
from tenants.quota.store import counters, settle_batch

logger = logging.getLogger(__name__)


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


async def quota_reserve(
    rules: tuple[QuotaRule, ...], model: str, *, tokens_in: int, tokens_out: int, cost: Decimal
) -> Reservation:
    """Check every limit that applies and reserve on all of them at once, or raise ``QuotaExceeded``."""
    checks = quota_checks(rules, model, tokens_in, tokens_out, int(cost * MICROS))
    if not checks:
        return Reservation()
    reserved = await counters_reserve(checks)
    if reserved is None:
        # Admitted without a reservation; what it uses is charged when it is settled.
        return Reservation(checks, [], unreserved=True)
    failed, current, values = reserved
    if failed:
        check = checks[failed - 1]
        headers = {"Retry-After": retry_after(check)}
        if check.kind in ("requests", "tokens"):
            refused = Reservation([check], [current])
            headers.update({name.decode(): value.decode() for name, value in refused.headers()})
        raise QuotaExceeded(check, current, headers)
    return Reservation(checks, values)


async def counters_reserve(checks: list[Check]) -> Reserved | None:
    """Reserve ``checks`` on the counters; None when the store is unreachable and ``QUOTA_FAIL_MODE``
    admits the request uncounted (``closed`` raises ``ServiceUnavailable`` instead)."""
    try:
        return await counters().reserve(checks)
    except Exception as exc:  # redis.RedisError, OSError: the store is unreachable
        if isinstance(exc, PlatformError):
            raise
        if settings.QUOTA_FAIL_MODE == "closed":
            raise ServiceUnavailable(
                "Quotas cannot be checked right now (Redis unavailable); retry shortly.",
                code="quota_backend_unavailable",
            ) from exc
        if not isinstance(exc, StoreUnavailable):  # the breaker said so once when it opened
            logger.warning("quota store unavailable, admitting without limits (QUOTA_FAIL_MODE=open): %s", exc)
        return None


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
    store = counters.peek()
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
                adjustments.append(charged(check, charge))
        elif used is not None and used != check.amount:
            adjustments.append(charged(check, used - check.amount))
    if adjustments:
        settle_batch().add(adjustments)


def charged(check: Check, delta: int) -> Pending:
    """``delta`` more on the counter of ``check``, for the settlement batch."""
    return (check.store, check.key, check.extra, delta, check.expires_at)
