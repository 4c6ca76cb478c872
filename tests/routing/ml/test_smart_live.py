"""A request to a smart group through the live server and the official SDK lands on the chosen model."""

from __future__ import annotations

import time

import openai
import pytest

from routing.ml import services
from routing.ml.models import RouterSample
from tests.request_logs import wait_for_log
from tests.routing.ml.prompts import EASY_PROMPTS, HARD_PROMPTS


def wait_for_sample(request_id: str) -> RouterSample:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sample = RouterSample.objects.filter(request_id=request_id).first()
        if sample is not None:
            return sample
        time.sleep(0.05)
    raise AssertionError(f"no routing sample for {request_id}")


@pytest.fixture
def client(server, owner_key, deployment_factory):
    deployment_factory("strong-model", "openai/strong-model")
    deployment_factory("weak-model", "openai/weak-model")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=owner_key.secret, max_retries=0)


def ask(client, text: str, **extra: object):
    response = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], **extra
    )
    return response.headers["x-request-id"], response.parse()


def test_learned_router_serves_hard_prompts_strong_and_easy_prompts_weak(client, group_factory):
    group = group_factory(strong_share=0.5)
    services.router_promote(
        artifact=services.router_train(group=group, actor="test", kind="knn", include_traffic=False), actor="test"
    )
    hard_id, hard = ask(client, HARD_PROMPTS[0])
    easy_id, easy = ask(client, EASY_PROMPTS[0])
    assert hard.choices[0].message.content and easy.choices[0].message.content
    assert wait_for_log(request_id=hard_id).model_served == "openai/strong-model"
    assert wait_for_log(request_id=easy_id).model_served == "openai/weak-model"
    sample = wait_for_sample(hard_id)
    assert (sample.router, sample.served_model, sample.group_id) == ("knn@1", "strong-model", group.pk)
    assert sample.record["decision_ms"] >= 0 and sample.score >= sample.threshold


def test_rules_and_requested_max_cost_through_the_server(client, group_factory):
    group_factory(router_kind="rules", rules={"strong_keywords": ["prove"]})
    strong_id, _ = ask(client, "prove it")
    capped_id, _ = ask(client, "prove it", extra_body={"max_cost_usd": 0.000001})
    assert wait_for_log(request_id=strong_id).model_served == "openai/strong-model"
    assert wait_for_log(request_id=capped_id).model_served == "openai/weak-model"
    assert wait_for_sample(capped_id).record["reason"] == "max_cost"


def test_bad_max_cost_is_refused_with_an_openai_error(client, group_factory):
    group_factory(router_kind="rules")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], extra_body={"max_cost_usd": -1}
        )
    assert caught.value.body["param"] == "max_cost_usd"
