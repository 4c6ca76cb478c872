"""Each routing strategy chooses as LiteLLM Router's namesake does; cooldowns leave deployments out."""

from __future__ import annotations

import asyncio
import collections
import random
import time

import pytest
from django.conf import settings

from routing.route_state import LocalRouteState, RedisRouteState
from routing.selectors import DeploymentTarget, GroupPolicy
from routing.strategies import deployment_choose


def target(deployment_id: int, **params: object) -> DeploymentTarget:
    return DeploymentTarget(
        id=deployment_id,
        model_name="group",
        litellm_model=f"openai/model-{deployment_id}",
        provider="openai",
        upstream_model=f"model-{deployment_id}",
        api_base="http://127.0.0.1:1/v1",
        api_key="",
        passthrough=True,
        created=0,
        extra_params=dict(params),
    )


def policy(strategy: str, **fields: object) -> GroupPolicy:
    return GroupPolicy(model_name="group", routing_strategy=strategy, num_retries=2, retry_after=0, **fields)


def choose(strategy: str, targets, state: LocalRouteState, *, stream=False, tokens=10, **fields):
    states = asyncio.run(state.view(targets))
    return deployment_choose(policy(strategy, **fields), targets, states, stream=stream, tokens=tokens)


def test_simple_shuffle_follows_weights():
    random.seed(7)
    targets = [target(1, weight=1), target(2, weight=3), target(3, weight=0)]
    state = LocalRouteState()
    counts = collections.Counter(choose("simple-shuffle", targets, state).target.id for _ in range(4000))
    assert counts[3] == 0, "weight 0 takes no traffic"
    assert 0.70 < counts[2] / 4000 < 0.80


def test_least_busy_picks_fewest_in_flight():
    targets = [target(1), target(2), target(3)]
    state = LocalRouteState()
    for deployment_id, busy in ((1, 3), (2, 1), (3, 2)):
        for _ in range(busy):
            state.begin(deployment_id, 0)
    choice = choose("least-busy", targets, state)
    assert choice.target.id == 2
    assert [c["score"] for c in choice.candidates] == [3, 1, 2]
    state.end(1, latency_ms=None, ttft_ms=None, tokens=0)
    state.end(1, latency_ms=None, ttft_ms=None, tokens=0)
    state.end(1, latency_ms=None, ttft_ms=None, tokens=0)
    assert choose("least-busy", targets, state).target.id == 1


def test_latency_based_uses_the_moving_window_and_ttft_for_streams():
    targets = [target(1), target(2)]
    state = LocalRouteState()
    for _ in range(settings.ROUTING_LATENCY_WINDOW):
        state.end(1, latency_ms=500, ttft_ms=20, tokens=0)
        state.end(2, latency_ms=100, ttft_ms=80, tokens=0)
    assert choose("latency-based-routing", targets, state).target.id == 2
    assert choose("latency-based-routing", targets, state, stream=True).target.id == 1
    # The window moves: deployment 2 slows down and, once its old samples are out, loses.
    for _ in range(settings.ROUTING_LATENCY_WINDOW):
        state.end(2, latency_ms=900, ttft_ms=80, tokens=0)
    assert choose("latency-based-routing", targets, state).target.id == 1


def test_latency_based_tries_an_unmeasured_deployment_first():
    targets = [target(1), target(2)]
    state = LocalRouteState()
    state.end(1, latency_ms=50, ttft_ms=None, tokens=0)
    assert choose("latency-based-routing", targets, state).target.id == 2


def test_cost_based_picks_the_cheapest_price():
    targets = [
        target(1, input_cost_per_token=5e-6, output_cost_per_token=15e-6),
        target(2, input_cost_per_token=1e-7, output_cost_per_token=4e-7),
        target(3, input_cost_per_token=1e-6, output_cost_per_token=1e-6),
    ]
    choice = choose("cost-based-routing", targets, LocalRouteState())
    assert choice.target.id == 2
    assert choice.candidates[1]["score"] == pytest.approx(0.5)  # USD per 1M tokens, in + out


def test_usage_based_stays_under_rpm_and_tpm():
    targets = [target(1, rpm=2), target(2, tpm=100), target(3)]
    state = LocalRouteState()
    state.begin(1, 0)
    state.begin(1, 0)
    state.begin(2, 95)
    state.begin(3, 500)
    choice = choose("usage-based-routing-v2", targets, state, tokens=10)
    excluded = {c["id"]: c.get("excluded") for c in choice.candidates}
    assert excluded[1] == "rpm 2/2" and excluded[2] == "tpm 95/100"
    assert choice.target.id == 3
    # Among deployments under their limits, the least used (by tokens this minute) wins.
    targets.append(target(4, rpm=1000))
    assert choose("usage-based-routing-v2", targets, state, tokens=10).target.id == 4


def test_usage_based_with_every_deployment_full_reports_no_capacity():
    targets = [target(1, rpm=1), target(2, rpm=1)]
    state = LocalRouteState()
    state.begin(1, 0)
    state.begin(2, 0)
    choice = choose("usage-based-routing-v2", targets, state)
    assert choice.target is None and choice.no_capacity


def test_cooldown_after_allowed_fails_then_recovery():
    targets = [target(1), target(2)]
    state = LocalRouteState()
    group = policy("simple-shuffle", allowed_fails=1, cooldown_time=0.3)
    assert asyncio.run(state.fail(1, group)) == 0, "the first failure is allowed"
    assert asyncio.run(state.fail(1, group)) > time.time()
    for _ in range(20):
        choice = choose("simple-shuffle", targets, state)
        assert choice.target.id == 2
    assert choice.candidates[0]["excluded"] == "cooldown"
    time.sleep(0.35)
    seen = {choose("simple-shuffle", targets, state).target.id for _ in range(50)}
    assert seen == {1, 2}, "a cooled-down deployment takes traffic again after cooldown_time"


def test_failures_outside_the_window_do_not_add_up():
    state = LocalRouteState()
    group = policy("simple-shuffle", allowed_fails=1, cooldown_time=5, fail_window=0.1)
    asyncio.run(state.fail(1, group))
    time.sleep(0.15)
    assert asyncio.run(state.fail(1, group)) == 0


def test_a_single_deployment_never_cools_down():
    targets = [target(1)]
    state = LocalRouteState()
    state.state_of(1).cooldown_until = time.time() + 60
    assert choose("simple-shuffle", targets, state).target.id == 1


def test_all_deployments_cooling_gives_no_choice_and_the_wait():
    targets = [target(1), target(2)]
    state = LocalRouteState()
    for deployment_id in (1, 2):
        state.state_of(deployment_id).cooldown_until = time.time() + 4
    choice = choose("least-busy", targets, state)
    assert choice.target is None and 3 < choice.retry_in <= 4


def test_a_deployment_that_failed_in_this_request_is_retried_only_when_nothing_else_is_left():
    targets = [target(1), target(2)]
    states = asyncio.run(LocalRouteState().view(targets))
    choice = deployment_choose(policy("least-busy"), targets, states, stream=False, tokens=1, tried=frozenset({1}))
    assert choice.target.id == 2
    choice = deployment_choose(policy("least-busy"), targets, states, stream=False, tokens=1, tried=frozenset({1, 2}))
    assert choice.target is not None


@pytest.mark.skipif(not settings.REDIS_URL, reason="shared routing state needs REDIS_URL")
def test_a_snapshot_too_old_is_waited_for(settings):
    settings.ROUTING_STATE_MAX_STALE = 0.05

    async def scenario() -> None:
        first, second = RedisRouteState(settings.REDIS_URL), RedisRouteState(settings.REDIS_URL)
        base = int(time.time() * 1000) % 10_000_000 * 10 + 5
        targets = [target(base), target(base + 1)]
        await second.view(targets)
        await first.fail(base, policy("least-busy", allowed_fails=0, cooldown_time=30))
        await asyncio.sleep(0.06)
        assert (await second.view(targets))[base].cooldown_until > time.time()
        assert second.round_trips == 2

    asyncio.run(scenario())


@pytest.mark.skipif(not settings.REDIS_URL, reason="shared routing state needs REDIS_URL")
def test_two_processes_share_cooldowns_in_flight_counts_and_latency_through_redis():
    """Two RedisRouteState objects stand for two server processes (the live test uses real ones)."""

    async def scenario() -> None:
        first, second = RedisRouteState(settings.REDIS_URL), RedisRouteState(settings.REDIS_URL)
        base = int(time.time() * 1000) % 10_000_000 * 10
        targets = [target(base + 1), target(base + 2)]
        group = policy("least-busy", allowed_fails=0, cooldown_time=30)
        await first.view(targets)
        await second.view(targets)
        assert await first.fail(base + 1, group) > time.time()
        first.begin(base + 2, 40)
        first.end(base + 2, latency_ms=123.0, ttft_ms=None, tokens=0)
        first.begin(base + 2, 0)
        await first.flush()
        await asyncio.sleep(settings.ROUTING_STATE_SYNC + 0.01)
        # A snapshot younger than ROUTING_STATE_MAX_STALE is served at once and refreshed behind.
        stale = await second.view(targets)
        assert stale[base + 1].cooldown_until == 0
        await asyncio.sleep(0.1)
        states = await second.view(targets)
        assert states[base + 1].cooldown_until > time.time() + 20
        assert states[base + 2].inflight == 1
        assert states[base + 2].rpm_used == 2 and states[base + 2].tpm_used == 40
        assert list(states[base + 2].latencies) == [123.0]
        choice = deployment_choose(group, targets, states, stream=False, tokens=1)
        assert choice.target.id == base + 2
        assert choice.candidates[0]["excluded"] == "cooldown"

    asyncio.run(scenario())
