"""Usage rollups written with the request logs, and the tenant usage page built on them."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from routing.models import RequestLog, UsageRollup
from routing.reports import percentile_ms
from routing.usage import UsageRow, _write_usage
from tenants import services
from tenants.models import Membership, Quota

SEQUENCE = itertools.count()


def row(tenant, key, *, status=200, latency=120.0, when=None, model="gpt-4o-mini"):
    return UsageRow(
        request_id=f"req_test_{next(SEQUENCE)}_{timezone.now().timestamp()}",
        created_at=when or timezone.now(),
        tenant_id=tenant.pk,
        api_key_id=key.pk,
        key_prefix=key.prefix,
        endpoint="chat.completions",
        model_requested=model,
        deployment_id=None,
        model_served=f"openai/{model}",
        stream=False,
        status_code=status,
        error_type="" if status == 200 else "upstream_error",
        prompt_tokens=100,
        completion_tokens=50,
        total_tokens=150,
        usage_estimated=False,
        latency_ms=latency,
        ttfb_ms=None,
        overhead_ms=1.0,
        client_disconnected=False,
    )


@pytest.fixture
def traffic(owner, owner_key, outsider, key_factory):
    other = key_factory(outsider, "other")
    now = timezone.now()
    rows = [row(owner, owner_key.key, latency=80) for _ in range(8)]
    rows += [
        row(owner, owner_key.key, status=502, latency=3000),
        row(owner, owner_key.key, model="gpt-4o", latency=400),
    ]
    rows += [row(owner, owner_key.key, when=now - dt.timedelta(days=2))]
    rows += [row(outsider, other.key) for _ in range(5)]
    _write_usage(rows[:6])  # two batches: the second adds to the buckets the first created
    _write_usage(rows[6:])
    return rows


def test_rollups_add_up_per_hour_tenant_key_and_model(traffic, owner):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    mini = UsageRollup.objects.get(tenant=owner, model="gpt-4o-mini", hour=hour)
    assert (mini.requests, mini.errors, mini.prompt_tokens, mini.completion_tokens) == (9, 1, 900, 450)
    assert mini.latency_h1 == 8 and mini.latency_h6 == 1  # 80 ms ≤ 100; 3000 ms ≤ 5000
    assert mini.cost_usd > 0
    assert UsageRollup.objects.filter(tenant=owner).count() == 3
    assert RequestLog.objects.filter(tenant=owner).count() == 11


def test_percentile_reads_the_latency_histogram():
    histogram = [0, 90, 0, 0, 0, 0, 10, 0, 0, 0]
    assert percentile_ms(histogram, 0.5) == 100
    assert percentile_ms(histogram, 0.95) == 5000
    assert percentile_ms([0] * 10, 0.5) == 0


@pytest.fixture
def superuser_client(transactional_db):
    User.objects.create_superuser("root", "", "pw-for-tests-only")
    client = Client()
    client.login(username="root", password="pw-for-tests-only")
    return client


def test_usage_page_shows_totals_charts_breakdowns_and_quota_gauges(traffic, owner, owner_key, superuser_client):
    services.quota_save(quota=Quota(tenant=owner, rpm_limit=100, max_budget=5), actor="test")
    response = superuser_client.get(reverse("admin:routing_usage_dashboard", args=[owner.pk]), {"days": "7"})
    assert response.status_code == 200
    page = response.content.decode()
    assert response.context["totals"]["requests"] == 11
    assert response.context["totals"]["errors"] == 1
    assert page.count('<svg class="usage-chart"') == 4
    assert {row["model"] for row in response.context["by_model"]} == {"gpt-4o", "gpt-4o-mini"}
    assert response.context["by_key"][0]["api_key__prefix"] == owner_key.key.prefix
    kinds = sorted(gauge.kind for gauge, _ in response.context["gauges"])
    assert kinds == ["budget", "requests"]
    assert "tenant owner" in page
    day = superuser_client.get(reverse("admin:routing_usage_dashboard", args=[owner.pk]), {"days": "1"})
    assert day.context["totals"]["requests"] == 10  # the row from two days ago is outside
    assert len(day.context["charts"]) == 4


def test_usage_page_of_another_tenant_is_403(traffic, owner, outsider):
    user = User.objects.create_user("viewer", password="pw-for-tests-only")
    services.membership_save(membership=Membership(user=user, tenant=owner, role="viewer"), actor="test")
    client = Client()
    client.login(username="viewer", password="pw-for-tests-only")
    assert client.get(reverse("admin:routing_usage_dashboard", args=[owner.pk])).status_code == 200
    assert client.get(reverse("admin:routing_usage_dashboard", args=[outsider.pk])).status_code == 403


def test_pruning_drops_old_raw_logs_but_keeps_the_rollups(owner, owner_key):
    from io import StringIO

    from django.core.management import call_command

    old, new = row(owner, owner_key.key, when=timezone.now() - dt.timedelta(days=40)), row(owner, owner_key.key)
    _write_usage([old, new])
    out = StringIO()
    call_command("usage_prune", "--days", "30", stdout=out)
    assert "deleted 1 request logs" in out.getvalue()
    assert list(RequestLog.objects.values_list("request_id", flat=True)) == [new.request_id]
    assert UsageRollup.objects.filter(tenant=owner).count() == 2


def test_request_log_search_finds_ids_and_key_prefixes_exactly(traffic, owner_key, superuser_client):
    url = reverse("admin:routing_requestlog_changelist")
    wanted = traffic[0].request_id
    by_id = superuser_client.get(url, {"q": wanted})
    assert [log.request_id for log in by_id.context["cl"].result_list] == [wanted]
    by_prefix = superuser_client.get(url, {"q": owner_key.key.prefix})
    assert {log.api_key_id for log in by_prefix.context["cl"].result_list} == {owner_key.key.pk}
    by_model = superuser_client.get(url, {"q": "gpt-4o"})
    assert len(by_model.context["cl"].result_list) == len(traffic)
