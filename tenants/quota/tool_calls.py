"""The MCP tool-call quota: one call counted against every tool-call limit, all or nothing, with nothing to settle."""

from __future__ import annotations

from tenants.quota.checks import QuotaRule, tool_call_checks
from tenants.quota.refusals import QuotaExceeded, retry_after
from tenants.quota.reservations import charged, counters_reserve
from tenants.quota.store import settle_batch


async def tool_call_quota_reserve(rules: tuple[QuotaRule, ...]) -> None:
    """Count one MCP tool call against every tool-call limit of ``rules`` (those for all
    models), or raise ``QuotaExceeded`` and count nothing. A tool call holds no concurrency
    slot and has no cost, so there is nothing to settle afterwards."""
    checks = tool_call_checks(rules)
    if not checks:
        return
    reserved = await counters_reserve(checks)
    if reserved is None:
        # Admitted uncounted: the call is counted when the store is back, if its minute still runs.
        settle_batch().add([charged(check, check.amount) for check in checks])
        return
    failed, current, _ = reserved
    if failed:
        check = checks[failed - 1]
        raise QuotaExceeded(check, current, {"Retry-After": retry_after(check)})
