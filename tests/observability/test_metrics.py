"""``/metrics`` after real traffic through two server processes sharing one multiprocess directory."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from observability import metrics
from tests.live import served

TOKEN = "scrape-token-0123456789"
PLAIN = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
STREAM = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "[[fake chunks=3]]"}]}'
UNKNOWN = b'{"model": "no-such-model-7f3a", "messages": [{"role": "user", "content": "hi"}]}'


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str) -> dict:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_metrics_from_two_processes_add_up_and_keep_labels_bounded(
    session_tmp, tmp_path, upstream, owner_key, deployment_factory
):
    deployment_factory()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": TOKEN}
    auth = {"Authorization": f"Bearer {owner_key.secret}"}
    with served(session_tmp, **env) as first, served(session_tmp, **env) as second:
        with httpx.Client(timeout=30) as client:
            for _ in range(3):
                assert client.post(f"{first.url}/v1/chat/completions", content=PLAIN, headers=auth).status_code == 200
            assert client.post(f"{second.url}/v1/chat/completions", content=PLAIN, headers=auth).status_code == 200
            assert client.post(f"{second.url}/v1/chat/completions", content=STREAM, headers=auth).status_code == 200
            assert client.post(f"{second.url}/v1/chat/completions", content=UNKNOWN, headers=auth).status_code == 404
            bad = {"Authorization": "Bearer sk-wrong-key-000000000000"}
            assert client.post(f"{first.url}/v1/chat/completions", content=PLAIN, headers=bad).status_code == 401

        refused = httpx.get(f"{first.url}/metrics", timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"

        for url in (first.url, second.url):  # either process reports the whole service
            parsed = scrape(url)
            ok = dict(endpoint="chat.completions", tenant="owner", model="gpt-4o-mini", status="200")
            assert value(parsed, "llmp_requests_total", **ok) == 5
            assert (
                value(
                    parsed, "llmp_requests_total", endpoint="chat.completions", tenant="owner", model="-", status="404"
                )
                == 1
            )
            assert (
                value(parsed, "llmp_requests_total", endpoint="chat.completions", tenant="-", model="-", status="401")
                == 1
            )
            assert value(parsed, "llmp_gateway_overhead_seconds_count", endpoint="chat.completions") == 7
            assert (
                value(parsed, "llmp_time_to_first_byte_seconds_count", endpoint="chat.completions", model="gpt-4o-mini")
                == 1
            )
            assert value(parsed, "llmp_tokens_total", tenant="owner", model="gpt-4o-mini", kind="completion") >= 5
            assert value(parsed, "llmp_cost_usd_total", tenant="owner", model="gpt-4o-mini") > 0
            assert value(parsed, "llmp_active_streams", endpoint="chat.completions") == 0
            assert value(parsed, "llmp_requests_in_flight", endpoint="chat.completions") == 0
            # Bounded labels: neither the key, the request id nor a client's made-up model name appear.
            labels = {label for _, pairs in parsed for label in pairs}
            assert not any("no-such-model" in v or owner_key.key.prefix in v or v.startswith("req_") for _, v in labels)


@pytest.mark.django_db
def test_metrics_are_off_unless_a_token_or_public_is_configured(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False
    response = client.get("/metrics")
    assert response.status_code == 403 and response.json()["error"]["code"] == "metrics_disabled"
    settings.METRICS_PUBLIC = True
    metrics.gauge_callback("llmp_test_callback", "A scrape-time value.", lambda: 42)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert value(samples(response.content.decode()), "llmp_test_callback") == 42


def test_helpers_for_other_areas_record_what_they_are_given():
    before = metrics.TOOL_CALLS.labels("github", "ok")._value.get()
    metrics.tool_call_observe("github", "ok", 0.2)
    metrics.cooldown_observe("gpt-4o", "openai/gpt-4o", "rate_limited")
    metrics.celery_job_observe("routing.tasks.usage_prune", "success", 1.5)
    metrics.mcp_session_opened()
    metrics.mcp_session_closed()
    parsed = samples(metrics.exposition().decode())
    assert value(parsed, "llmp_mcp_tool_calls_total", server="github", outcome="ok") == before + 1
    assert (
        value(
            parsed, "llmp_deployment_cooldowns_total", model="gpt-4o", deployment="openai/gpt-4o", reason="rate_limited"
        )
        >= 1
    )
    assert value(parsed, "llmp_celery_jobs_total", task="routing.tasks.usage_prune", outcome="success") >= 1


FORK_SCRIPT = """
import os
from observability import metrics
requests = metrics.REQUESTS.labels("chat.completions", "t", "m", "200")
requests.inc()
child = os.fork()
if child == 0:  # a forked worker (Celery's prefork pool) counts in a file of its own
    requests.inc(2)
    os._exit(0)
os.waitpid(child, 0)
requests.inc()  # the parent's own count goes on from its own value, not the child's
print(os.getpid(), child)
"""


def test_a_forked_process_writes_multiprocess_values_under_its_own_pid(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    parent, child = done.stdout.split()
    assert {path.name for path in tmp_path.iterdir()} >= {f"counter_{parent}.db", f"counter_{child}.db"}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    total = registry.get_sample_value(
        "llmp_requests_total", {"endpoint": "chat.completions", "tenant": "t", "model": "m", "status": "200"}
    )
    assert total == 4
