"""`manage.py loadconfig`: LiteLLM's model_list plus tenants, idempotent, audited, all-or-nothing."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.core.management import CommandError
from django.db import connection

from audit.models import AuditEvent
from routing.models import ModelDeployment, RouteGroup
from tenants.models import ApiKey, Quota, Tenant, key_hash
from tests.llm_platform.config_load import load

CONFIG = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9100/v1
      api_key: os.environ/TEST_PROVIDER_KEY
      timeout: 30
    model_info:
      input_cost_per_token: 0.000001
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9101/v1
router_settings:
  routing_strategy: simple-shuffle
tenants:
  - slug: search
    name: Search team
    api_keys:
      - name: backend
        key: sk-search-backend-0123456789
        models: [gpt-4o-mini]
      - name: generated
"""


@pytest.fixture
def provider_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_PROVIDER_KEY", "sk-provider-from-env")
    return "sk-provider-from-env"


def test_loadconfig_creates_deployments_tenants_and_keys(db, tmp_path, provider_key):
    out, err = load(tmp_path, CONFIG)
    deployments = ModelDeployment.objects.filter(model_name="gpt-4o-mini").order_by("api_base")
    assert [d.api_base for d in deployments] == ["http://127.0.0.1:9100/v1", "http://127.0.0.1:9101/v1"]
    first = deployments[0]
    assert first.api_key == provider_key
    assert first.extra_params == {"timeout": 30, "input_cost_per_token": 0.000001}
    tenant = Tenant.objects.get(slug="search")
    assert tenant.name == "Search team"
    backend = ApiKey.objects.get(tenant=tenant, name="backend")
    assert backend.secret_hash == key_hash("sk-search-backend-0123456789")
    assert backend.allowed_models == ["gpt-4o-mini"]
    generated = ApiKey.objects.get(tenant=tenant, name="generated")
    assert "new API key search/generated: sk-" in out
    secret = out.split("new API key search/generated: ")[1].split()[0]
    assert generated.secret_hash == key_hash(secret)
    assert "router_settings: not used" not in err
    assert RouteGroup.objects.get(model_name="gpt-4o-mini").routing_strategy == "simple-shuffle"
    assert AuditEvent.objects.filter(actor="config:config.yaml", action="api_key.create").count() == 2


def test_provider_key_is_encrypted_at_rest(db, tmp_path, provider_key):
    load(tmp_path, CONFIG)
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM routing_modeldeployment WHERE api_base = %s", ["http://127.0.0.1:9100/v1"])
        stored = cursor.fetchone()[0]
    assert provider_key not in stored and stored.startswith("gAAAAA")


def test_loadconfig_twice_changes_nothing(db, tmp_path, provider_key):
    load(tmp_path, CONFIG)
    events = AuditEvent.objects.count()
    out, _ = load(tmp_path, CONFIG)
    assert "0 created, 0 updated, 6 unchanged" in out  # 2 deployments, 1 route group, tenant, 2 keys
    assert AuditEvent.objects.count() == events
    assert ApiKey.objects.count() == 2


def test_changed_key_and_models_are_updated_in_place(db, tmp_path, provider_key):
    load(tmp_path, CONFIG)
    changed = CONFIG.replace("sk-search-backend-0123456789", "sk-search-backend-rotated-99").replace(
        "models: [gpt-4o-mini]", "models: [gpt-4o-mini, gpt-4o]"
    )
    out, _ = load(tmp_path, changed)
    assert "updated   api key search/backend" in out
    backend = ApiKey.objects.get(name="backend")
    assert backend.secret_hash == key_hash("sk-search-backend-rotated-99")
    assert backend.allowed_models == ["gpt-4o-mini", "gpt-4o"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list: {}", "model_list must be a list"),
        ("model_list:\n  - model_name: x\n    litellm_params: {model: gpt-4o}", "<provider>/<model>"),
        ("model_list:\n  - litellm_params: {model: openai/x}", "model_list[0].model_name"),
        ("tenants:\n  - slug: a\n    api_keys:\n      - name: k\n        key: short", "at least 16 characters"),
        ("tenants:\n  - slug: 'not a slug!'", "tenants[0]"),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: openai/x, api_key: os.environ/NOPE_UNSET}",
            "NOPE_UNSET",
        ),
        ("surprise: 1", "unknown top-level section"),
        ("model_list: [", "not valid YAML"),
        (
            "model_list:\n  - model_name: ok\n    litellm_params: {model: openai/ok}\n  - model_name: bad\n"
            "    litellm_params: {model: nope}",
            "model_list[1]",
        ),
    ],
)
def test_bad_config_is_refused_with_a_clear_error_and_nothing_applied(db, tmp_path, text, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        load(tmp_path, text)
    assert Tenant.objects.count() == 0
    assert ModelDeployment.objects.count() == 0
    assert ApiKey.objects.count() == 0


LIMITS = """
tenants:
  - slug: acme
    limits:
      rpm_limit: 600
      max_budget: 100
      budget_duration: 30d
      model_limits:
        gpt-4o: {rpm_limit: 10, tpm_limit: 20000}
    api_keys:
      - name: ci
        key: sk-acme-ci-0123456789abcdef
        limits:
          - {rpm_limit: 60, max_parallel_requests: 2}
          - {max_budget: 1.5, budget_duration: 1d}
"""


def test_litellm_style_limits_become_quotas_for_tenants_and_keys(db, tmp_path):
    load(tmp_path, LIMITS)
    tenant = Tenant.objects.get(slug="acme")
    tenant_quotas = {q.model: q for q in Quota.objects.filter(tenant=tenant)}
    assert tenant_quotas[""].rpm_limit == 600 and tenant_quotas[""].max_budget == 100
    assert tenant_quotas[""].budget_duration == "30d"
    assert (tenant_quotas["gpt-4o"].rpm_limit, tenant_quotas["gpt-4o"].tpm_limit) == (10, 20000)
    key_quotas = sorted(Quota.objects.filter(api_key__name="ci"), key=lambda q: q.budget_duration)
    assert [(q.budget_duration, q.rpm_limit, q.max_parallel_requests, q.max_budget) for q in key_quotas] == [
        ("1d", None, None, Decimal("1.5")),
        ("30d", 60, 2, None),
    ]
    assert AuditEvent.objects.filter(action="quota.create").count() == 4
    out, _ = load(tmp_path, LIMITS)
    assert "0 created, 0 updated" in out


RATE_AND_BUDGET = """
tenants:
  - slug: acme
    limits:
      - {rpm_limit: 600, tpm_limit: 100000}
      - {max_budget: 100, budget_duration: 30d}
    api_keys:
      - name: ci
        key: sk-acme-ci-0123456789abcdef
        limits:
          - {rpm_limit: 60, max_parallel_requests: 2}
          - {max_budget: 25}
          - {max_budget: 1.5, budget_duration: 1d}
          - {model: gpt-4o, tpm_limit: 5000}
          - {model: gpt-4o, rpm_limit: 6, tpm_limit: 5000.0}
"""


def test_a_rate_limit_and_a_monthly_budget_listed_apart_keep_every_limit_and_reload_as_no_change(db, tmp_path):
    load(tmp_path, RATE_AND_BUDGET)
    tenant = Tenant.objects.get(slug="acme")
    (tenant_quota,) = Quota.objects.filter(tenant=tenant)
    assert (tenant_quota.budget_duration, tenant_quota.rpm_limit, tenant_quota.tpm_limit) == ("30d", 600, 100000)
    assert tenant_quota.max_budget == 100
    key_quotas = {(q.model, q.budget_duration): q for q in Quota.objects.filter(api_key__name="ci")}
    assert {
        where: (q.rpm_limit, q.tpm_limit, q.max_parallel_requests, q.max_budget) for where, q in key_quotas.items()
    } == {
        ("", "30d"): (60, None, 2, Decimal("25")),
        ("", "1d"): (None, None, None, Decimal("1.5")),
        ("gpt-4o", "30d"): (6, 5000, None, None),
    }
    events = AuditEvent.objects.count()
    out, _ = load(tmp_path, RATE_AND_BUDGET)
    assert "0 created, 0 updated" in out
    assert AuditEvent.objects.count() == events, "a reload of the same file must audit nothing"
    assert Quota.objects.count() == 4


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("[{rpm_limit: 60}, {rpm_limit: 100, max_budget: 5}]", "limits[1].rpm_limit: 100 conflicts with 60 given at"),
        ("[{max_budget: 5}, {max_budget: 6, budget_duration: month}]", "limits[1].max_budget: 6 conflicts with"),
        ("{rpm_limit: 60.5}", "limits.rpm_limit must be a whole number, got 60.5"),
        ("{tpm_limit: '60'}", "limits.tpm_limit must be a whole number"),
        ("{max_parallel_requests: true}", "limits.max_parallel_requests must be a whole number"),
    ],
)
def test_limits_that_one_quota_row_cannot_hold_as_given_are_refused(db, tmp_path, limits, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        load(tmp_path, f"tenants:\n  - slug: acme\n    limits: {limits}\n")
    assert not Quota.objects.exists() and not Tenant.objects.exists()


DEPLOYMENT = "  - model_name: m\n    litellm_params: {{model: openai/m, api_base: 'http://127.0.0.1:9/v1', {extra}}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model_list:\n" + DEPLOYMENT.format(extra="timeout: 5") + DEPLOYMENT.format(extra="timeout: 9"),
            "model_list[1]: the deployment of m to openai/m at http://127.0.0.1:9/v1"
            " is declared already at model_list[0]",
        ),
        (
            "tenants:\n  - slug: acme\n  - slug: acme\n    name: Other\n",
            "tenants[1]: tenant 'acme' is declared already",
        ),
        (
            "tenants:\n  - slug: acme\n    api_keys:\n      - name: ci\n      - name: ci\n        models: [m]\n",
            "tenants[0].api_keys[1]: api key 'ci' of tenant 'acme' is declared already at tenants[0].api_keys[0]",
        ),
        (
            "mcp_servers:\n  - name: tools\n    url: http://127.0.0.1:1/mcp\n  - name: tools\n    url: http://127.0.0.1:2/mcp\n",
            "mcp_servers[1]: mcp server 'tools' is declared already at mcp_servers[0]",
        ),
        (
            "smart_groups:\n  - {name: auto, strong: a, weak: b}\n  - {name: auto, strong: a, weak: c}\n",
            "smart_groups[1]: smart group auto is declared already at smart_groups[0]",
        ),
    ],
)
def test_one_row_declared_twice_is_refused_rather_than_overwritten(db, tmp_path, settings, text, message):
    settings.SSRF_ALLOWLIST = ["127.0.0.1"]
    with pytest.raises(CommandError, match=re.escape(message)):
        load(tmp_path, text)
    assert not Tenant.objects.exists() and not ModelDeployment.objects.exists()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("{rpm_limit: -5}", "rpm_limit"),
        ("{rpm_limit: 100000000000}", "rpm_limit"),
        ("{max_budget: lots}", "max_budget must be a number"),
        ("{max_budget: 5, budget_duration: 7y}", "budget_duration must be 1d or 30d"),
        ("{requests_per_day: 5}", "unknown limit(s) requests_per_day"),
    ],
)
def test_bad_limits_are_refused(db, tmp_path, limits, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        load(tmp_path, f"tenants:\n  - slug: acme\n    limits: {limits}\n")
    assert not Quota.objects.exists() and not Tenant.objects.exists()


def test_key_scopes_load_and_unknown_scopes_are_refused(db, tmp_path):
    load(tmp_path, "tenants:\n  - slug: acme\n    api_keys:\n      - name: bot\n        scopes: [chat]\n")
    assert ApiKey.objects.get(name="bot").scopes == ["chat"]
    with pytest.raises(CommandError, match="Unknown scope"):
        load(tmp_path, "tenants:\n  - slug: other\n    api_keys:\n      - name: bot\n        scopes: [telepathy]\n")
