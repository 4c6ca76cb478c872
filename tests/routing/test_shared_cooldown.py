"""Two real server processes on one Redis route as one: a cooldown started by one is honoured by the other."""

from __future__ import annotations

import time

import openai
import pytest
from django.conf import settings

from tests import live
from tests.request_logs import wait_for_log
from tests.routing.fake_upstreams import behave, requests_seen

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="sharing routing state across processes needs Redis")


def test_a_cooldown_started_in_one_process_is_honoured_by_another(
    session_tmp, django_db_setup, fakes, route_group, owner_key
):
    dead, alive = fakes[0], fakes[1]
    behave(dead, status=500)
    deployments = route_group(
        "shared", [dead, alive], params=[{"weight": 1000}, {"weight": 1}], allowed_fails=0, cooldown_time=30
    )
    with live.daphne_server(session_tmp) as first, live.daphne_server(session_tmp) as second:
        one = openai.OpenAI(base_url=f"{first.url}/v1", api_key=owner_key.secret, max_retries=0)
        two = openai.OpenAI(base_url=f"{second.url}/v1", api_key=owner_key.secret, max_retries=0)
        before = requests_seen(dead)
        response = one.chat.completions.with_raw_response.create(
            model="shared", messages=[{"role": "user", "content": "hi"}]
        )
        assert response.http_response.status_code == 200
        decision = wait_for_log(request_id=response.headers["x-request-id"]).route_decision
        assert decision["attempts"][0]["cooldown"] == 30
        assert decision["shared_state"] is True
        time.sleep(settings.ROUTING_STATE_SYNC + 0.1)
        for _ in range(5):
            response = two.chat.completions.with_raw_response.create(
                model="shared", messages=[{"role": "user", "content": "hi"}]
            )
            decision = wait_for_log(request_id=response.headers["x-request-id"]).route_decision
            assert decision["attempts"] == [], "the second process never tries the cooled-down deployment"
            assert decision["candidates"][0]["excluded"] == "cooldown"
            assert decision["served"] == deployments[1].pk
        assert requests_seen(dead) - before == 1
