"""Retries, cooldowns and fallbacks against real fake upstreams that fail in scripted ways;
each request's decision record and headers say where it went."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from routing.models import RouteGroup
from routing.services import route_group_save
from tests.request_logs import wait_for_log, wait_for_logs
from tests.routing.fake_upstreams import behave, requests_seen


@pytest.fixture
def client(routing_server, owner_key):
    return openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=owner_key.secret, max_retries=0)


def ask(client, model, content="hello", **extra):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **extra
    )


def test_a_failing_deployment_is_retried_on_another_and_the_record_says_so(client, fakes, route_group):
    dead, alive = fakes[0], fakes[1]
    behave(dead, status=500)
    deployments = route_group("pair", [dead, alive], routing_strategy="least-busy", allowed_fails=100)
    served = set()
    for _ in range(8):
        response = ask(client, "pair")
        assert response.parse().choices[0].message.content.startswith("Hello")
        assert response.headers["x-route-model"] == "pair"
        assert response.headers["x-route-strategy"] == "least-busy"
        assert response.headers["x-route-fallbacks"] == "0"
        assert float(response.headers["x-request-cost"]) >= 0
        log = wait_for_log(request_id=response.headers["x-request-id"])
        decision = log.route_decision
        assert decision["served"] == deployments[1].pk and log.deployment_id == deployments[1].pk
        assert decision["strategy"] == "least-busy" and decision["group"] == "pair"
        assert {c["id"] for c in decision["candidates"]} == {d.pk for d in deployments}
        assert len(decision["prompt_sha256"]) == 64 and "hello" not in json.dumps(decision)
        if decision["chosen"] == deployments[0].pk:
            assert decision["attempts"] == [
                {
                    "deployment": deployments[0].pk,
                    "group": "pair",
                    "status": 502,
                    "error": "upstream_error",
                    "ms": decision["attempts"][0]["ms"],
                }
            ]
        served.add(decision["chosen"])
    assert served == {deployments[0].pk, deployments[1].pk}, "least-busy ties are broken at random"


def test_a_deployment_cools_down_after_allowed_fails_and_recovers(client, fakes, route_group):
    dead, alive = fakes[0], fakes[1]
    behave(dead, status=503)
    deployments = route_group(
        "cooling", [dead, alive], params=[{"weight": 100}, {"weight": 1}], allowed_fails=1, cooldown_time=1.5
    )
    seen_before = requests_seen(dead)
    for _ in range(10):
        assert ask(client, "cooling").http_response.status_code == 200
    # Weighted 100:1 towards the dead one, it is tried until its second failure, then left out.
    assert requests_seen(dead) - seen_before == 2
    logs = wait_for_logs(10, model_requested="cooling")
    last = logs[-1].route_decision
    assert last["candidates"][0] == {
        "id": deployments[0].pk,
        "model": deployments[0].litellm_model,
        "excluded": "cooldown",
    }
    assert any(a.get("cooldown") == 1.5 for log in logs for a in log.route_decision["attempts"])
    behave(dead)
    time.sleep(1.6)
    for _ in range(5):
        ask(client, "cooling")
    assert requests_seen(dead) - seen_before >= 5, "after cooldown_time the deployment takes traffic again"


def test_a_timeout_is_retried_on_another_deployment(client, fakes, route_group):
    slow, fast = fakes[0], fakes[1]
    behave(slow, delay_ms=3000)
    # Cost-based, the slow deployment the cheaper: it is always tried first (a weighted shuffle
    # picked the fast one first about one time in a hundred, and then nothing was retried).
    deployments = route_group(
        "timing",
        [slow, fast],
        params=[{"timeout": 0.3, "input_cost_per_token": 1e-9}, {"input_cost_per_token": 1e-6}],
        routing_strategy="cost-based-routing",
        num_retries=1,
    )
    response = ask(client, "timing")
    assert response.http_response.status_code == 200
    decision = wait_for_log(request_id=response.headers["x-request-id"]).route_decision
    assert decision["attempts"][0]["deployment"] == deployments[0].pk
    assert decision["attempts"][0]["error"] == "upstream_timeout"
    assert decision["served"] == deployments[1].pk


def test_a_single_deployment_is_retried_with_backoff_then_the_error_returned(client, fakes, route_group):
    behave(fakes[0], status=500)
    route_group("lonely", [fakes[0]], num_retries=2, retry_after=0.05)
    before = requests_seen(fakes[0])
    with pytest.raises(openai.InternalServerError) as failed:
        ask(client, "lonely")
    assert requests_seen(fakes[0]) - before == 3
    decision = wait_for_log(request_id=failed.value.response.headers["x-request-id"]).route_decision
    assert [a.get("backoff_ms") for a in decision["attempts"]] == [50.0, 100.0, None]
    assert decision["served"] is None


def test_a_bad_request_is_not_retried(client, fakes, route_group):
    route_group("strict", [fakes[0], fakes[1]])
    before = requests_seen(fakes[0]) + requests_seen(fakes[1])
    with pytest.raises(openai.BadRequestError):
        ask(client, "strict", "[[fake status=400]]")
    assert requests_seen(fakes[0]) + requests_seen(fakes[1]) - before == 1


def test_fallback_to_another_group_when_every_deployment_fails(client, fakes, route_group, owner):
    behave(fakes[0], status=500)
    route_group("primary", [fakes[0]], num_retries=1, retry_after=0, fallbacks=["nowhere", "backup"])
    route_group("nowhere", [fakes[0]], num_retries=0)
    backup = route_group("backup", [fakes[1]])
    response = ask(client, "primary")
    assert response.http_response.status_code == 200
    assert response.headers["x-route-model"] == "backup"
    assert response.headers["x-route-fallbacks"] == "2"
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.model_requested == "primary" and log.deployment_id == backup[0].pk
    assert [f["model"] for f in log.route_decision["fallbacks"]] == ["nowhere", "backup"]
    assert [a["group"] for a in log.route_decision["attempts"]] == ["primary", "primary", "nowhere"]


def test_fallbacks_the_key_may_not_use_are_skipped(routing_server, fakes, route_group, owner, key_factory):
    behave(fakes[0], status=500)
    route_group("only-this", [fakes[0]], num_retries=0, fallbacks=["forbidden"])
    route_group("forbidden", [fakes[1]])
    narrow = key_factory(owner, "narrow", allowed_models=["only-this"])
    client = openai.OpenAI(base_url=f"{routing_server.url}/v1", api_key=narrow.secret, max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        ask(client, "only-this")
    log = wait_for_log(request_id=failed.value.response.headers["x-request-id"])
    assert log.route_decision["fallbacks"] == [
        {"model": "forbidden", "reason": "retry", "skipped": "not allowed for this key"}
    ]


@pytest.mark.parametrize(
    ("error", "setting"),
    [("context_window", "context_window_fallbacks"), ("content_policy", "content_policy_fallbacks")],
)
def test_context_window_and_content_policy_refusals_use_their_own_fallbacks(client, fakes, route_group, error, setting):
    behave(fakes[0], error=error)
    route_group("small", [fakes[0]], **{setting: ["large"], "fallbacks": ["general"]})
    route_group("large", [fakes[1]])
    route_group("general", [fakes[2]])
    response = ask(client, "small")
    assert response.headers["x-route-model"] == "large"
    decision = wait_for_log(request_id=response.headers["x-request-id"]).route_decision
    assert decision["fallbacks"][0]["reason"] == error
    assert decision["attempts"][0]["error"] == f"{error}_exceeded" if error == "context_window" else True


def test_a_context_window_refusal_without_fallbacks_is_a_400(client, fakes, route_group):
    behave(fakes[0], error="context_window")
    route_group("tight", [fakes[0]])
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, "tight")
    assert refused.value.body["code"] == "context_window_exceeded"


def test_every_deployment_cooling_without_fallbacks_is_a_503_with_retry_after(client, fakes, route_group):
    behave(fakes[0], status=500)
    behave(fakes[1], status=500)
    route_group("doomed", [fakes[0], fakes[1]], allowed_fails=0, cooldown_time=30, num_retries=1)
    with pytest.raises(openai.InternalServerError):
        ask(client, "doomed")
    with pytest.raises(openai.InternalServerError) as refused:
        ask(client, "doomed")
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "no_deployment_available"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 30
    assert refused.value.response.headers["x-route-model"] == "doomed"


def test_usage_based_routing_spreads_under_rpm_and_refuses_when_full(client, fakes, route_group):
    deployments = route_group(
        "metered", [fakes[0], fakes[1]], params=[{"rpm": 2}, {"rpm": 2}], routing_strategy="usage-based-routing-v2"
    )
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.1)  # keep the four requests in one minute window
    for _ in range(4):
        assert ask(client, "metered").http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, "metered")
    assert refused.value.body["code"] == "deployment_capacity_exhausted"
    logs = wait_for_logs(5, model_requested="metered")
    assert sorted(log.deployment_id for log in logs[:4]) == sorted([deployments[0].pk] * 2 + [deployments[1].pk] * 2)


def test_a_route_group_change_reaches_the_running_server(client, fakes, route_group):
    route_group("switching", [fakes[0], fakes[1]], params=[{"input_cost_per_token": 1e-5}, {}])
    group = RouteGroup.objects.get(model_name="switching")
    group.routing_strategy = "cost-based-routing"
    route_group_save(group=group, actor="test")
    time.sleep(0.2)
    response = ask(client, "switching")
    assert response.headers["x-route-strategy"] == "cost-based-routing"
    decision = wait_for_log(request_id=response.headers["x-request-id"]).route_decision
    assert decision["policy_version"] == 2


def stream_lines(server, secret, model, content):
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}], "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        return response, [line for line in response.iter_lines() if line]


@pytest.mark.parametrize(
    "failure",
    [{"status": 500}, {"drop_after": -2}, {"first_byte_ms": 3000}, {"abort": True}],
    ids=["500", "dropped-before-first-event", "slow-first-byte", "connection-aborted"],
)
def test_a_stream_failing_before_its_first_byte_fails_over(client, fakes, route_group, failure):
    behave(fakes[0], **failure)
    deployments = route_group(
        "streams", [fakes[0], fakes[1]], params=[{"weight": 1000, "stream_timeout": 0.5}, {"weight": 1}]
    )
    stream = client.chat.completions.with_raw_response.create(
        model="streams", messages=[{"role": "user", "content": "hi [[fake chunks=4]]"}], stream=True
    )
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello")
    decision = wait_for_log(request_id=stream.headers["x-request-id"]).route_decision
    assert decision["attempts"][0]["deployment"] == deployments[0].pk
    assert decision["served"] == deployments[1].pk


def test_a_stream_broken_after_its_first_byte_ends_with_an_sse_error_then_done(
    routing_server, owner_key, fakes, route_group
):
    deployments = route_group("fragile", [fakes[0], fakes[1]], params=[{"weight": 1000}, {"weight": 1}])
    response, lines = stream_lines(routing_server, owner_key.secret, "fragile", "hi [[fake chunks=6 drop_after=2]]")
    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "upstream_error" and "broke off" in error["message"]
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[:-2]]
    assert "".join(c or "" for c in contents).startswith("Hello")
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert log.route_decision["attempts"] == [] and log.deployment_id == deployments[0].pk
    assert log.status_code == 502
