"""The public tool-call quota: tool_rpm limits for all models count MCP tool calls, all or nothing."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import ServiceUnavailable
from tenants import quota
from tenants.quota import QuotaExceeded, QuotaRule, tool_call_quota_reserve
from tests.tenants.quota_fixtures import replaced


@pytest.fixture
def local_counters(request: pytest.FixtureRequest) -> quota.LocalCounters:
    return replaced(request, quota.counters, quota.LocalCounters())


async def test_the_tighter_limit_refuses_and_a_refused_call_counts_nowhere(local_counters: Any) -> None:
    key = QuotaRule(scope="key:1", label="API key sk-a…", model="", tool_rpm=5)
    tenant = QuotaRule(scope="tenant:1", label="tenant acme", model="", tool_rpm=2)
    for _ in range(2):
        await tool_call_quota_reserve((key, tenant))
    with pytest.raises(QuotaExceeded) as refused:
        await tool_call_quota_reserve((key, tenant))
    assert refused.value.code == "tool_rpm_limit_exceeded"
    assert "tenant acme: 2 tool calls per minute" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) >= 1
    # The key's own limit (5) was not charged for the refused call: 2 used, 3 left.
    await tool_call_quota_reserve((key,))
    await tool_call_quota_reserve((key,))
    await tool_call_quota_reserve((key,))
    with pytest.raises(QuotaExceeded):
        await tool_call_quota_reserve((key,))


async def test_rules_for_one_model_or_without_a_tool_limit_do_not_count_tool_calls(local_counters: Any) -> None:
    rules = (
        QuotaRule(scope="key:2", label="API key sk-b…", model="gpt-4o", tool_rpm=1),
        QuotaRule(scope="tenant:2", label="tenant beta", model="", rpm=1),
    )
    for _ in range(3):
        await tool_call_quota_reserve(rules)


class DownCounters:
    async def reserve(self, checks: Any) -> Any:
        raise ConnectionError("redis is down")


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_an_unreachable_store_follows_quota_fail_mode(
    request: pytest.FixtureRequest, settings: Any, mode: str
) -> None:
    settings.QUOTA_FAIL_MODE = mode
    replaced(request, quota.counters, DownCounters())
    rules = (QuotaRule(scope="key:3", label="API key sk-c…", model="", tool_rpm=1),)
    if mode == "closed":
        with pytest.raises(ServiceUnavailable):
            await tool_call_quota_reserve(rules)
    else:
        await tool_call_quota_reserve(rules)
