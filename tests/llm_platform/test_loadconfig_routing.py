"""`manage.py loadconfig` with LiteLLM's router_settings: route groups per model name, idempotent,
audited, all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError

from audit.models import AuditEvent
from routing.models import ModelDeployment, RouteGroup
from tests.llm_platform.config_load import load

CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_base: "http://127.0.0.1:9100/v1", weight: 3, rpm: 600, tpm: 90000}
  - model_name: gpt-4o
    litellm_params: {model: azure/gpt-4o, api_base: "http://127.0.0.1:9101/v1", weight: 1}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:9100/v1"}
  - model_name: gpt-4o-long
    litellm_params: {model: openai/gpt-4o-long, api_base: "http://127.0.0.1:9100/v1"}
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 3
  retry_after: 0.2
  allowed_fails: 2
  cooldown_time: 30
  fallbacks: [{gpt-4o: [gpt-4o-mini]}]
  context_window_fallbacks: [{gpt-4o: [gpt-4o-long]}, {gpt-4o-mini: [gpt-4o-long]}]
  content_policy_fallbacks: [{gpt-4o: gpt-4o-mini}]
  enable_pre_call_checks: true
  model_group_settings:
    gpt-4o-mini: {routing_strategy: least-busy, num_retries: 0}
"""


def test_router_settings_become_route_groups(db, tmp_path: Path):
    _, err = load(tmp_path, CONFIG)
    big = RouteGroup.objects.get(model_name="gpt-4o")
    assert big.routing_strategy == "usage-based-routing-v2"
    assert (big.num_retries, big.retry_after, big.allowed_fails, big.cooldown_time) == (3, 0.2, 2, 30)
    assert big.fallbacks == ["gpt-4o-mini"]
    assert big.context_window_fallbacks == ["gpt-4o-long"]
    assert big.content_policy_fallbacks == ["gpt-4o-mini"]
    mini = RouteGroup.objects.get(model_name="gpt-4o-mini")
    assert (mini.routing_strategy, mini.num_retries, mini.allowed_fails) == ("least-busy", 0, 2)
    assert mini.fallbacks == [] and mini.context_window_fallbacks == ["gpt-4o-long"]
    assert RouteGroup.objects.count() == 3
    deployment = ModelDeployment.objects.get(litellm_model="openai/gpt-4o")
    assert deployment.extra_params == {"weight": 3, "rpm": 600, "tpm": 90000}
    assert "enable_pre_call_checks not used" in err
    assert AuditEvent.objects.filter(action="route_group.create", actor="config:config.yaml").count() == 3


def test_loading_twice_changes_nothing_and_a_change_bumps_the_version(db, tmp_path: Path):
    load(tmp_path, CONFIG)
    out, _ = load(tmp_path, CONFIG)
    assert "0 created, 0 updated" in out
    assert RouteGroup.objects.get(model_name="gpt-4o").version == 1
    load(tmp_path, CONFIG.replace("cooldown_time: 30", "cooldown_time: 10"))
    group = RouteGroup.objects.get(model_name="gpt-4o")
    assert (group.cooldown_time, group.version) == (10, 2)
    assert AuditEvent.objects.filter(action="route_group.change").count() == 3


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        ("routing_strategy: usage-based-routing-v2", "routing_strategy: fastest", "router_settings.routing_strategy"),
        ("num_retries: 3", "num_retries: -1", "router_settings.num_retries must be a non-negative number"),
        ("num_retries: 3", "num_retries: 1.5", "router_settings.num_retries must be a whole number"),
        ("fallbacks: [{gpt-4o: [gpt-4o-mini]}]", "fallbacks: [{gpt-4o: [nope]}]", "unknown model 'nope'"),
        ("fallbacks: [{gpt-4o: [gpt-4o-mini]}]", "fallbacks: [{gpt-4o: [gpt-4o]}]", "cannot fall back to itself"),
        ("fallbacks: [{gpt-4o: [gpt-4o-mini]}]", "fallbacks: {gpt-4o: x}", "fallbacks must be a list"),
    ],
)
def test_bad_router_settings_load_nothing(db, tmp_path: Path, before, after, message):
    with pytest.raises(CommandError, match=message):
        load(tmp_path, CONFIG.replace(before, after))
    assert not RouteGroup.objects.exists()
    assert not ModelDeployment.objects.exists(), "all or nothing: the deployments are rolled back too"
