"""The processes bench/run.py measures: the fake upstream and the gateway, and the data the gateway serves."""

from __future__ import annotations

import subprocess
import sys

from bench_env import ROOT

KEY = "sk-bench-0123456789abcdefghijklmnop"
QUOTA_KEY = "sk-benchq-0123456789abcdefghijklmno"  # --quota-compare: a second tenant, with quotas
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
CHUNKS, GAP_MS = 20, 10.0
APPLICATION = "llm_platform.asgi:application"


def setup(env: dict[str, str], upstream: str, *, quota: bool, quota_key: bool = False) -> None:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    # A --database given on the command line may hold an earlier run's rows: start empty.
    subprocess.run([python, "manage.py", "flush", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    script = f"""
from tenants.models import Tenant
from tenants import services
from routing.models import ModelDeployment
from routing.services import deployment_save
tenant = services.tenant_save(tenant=Tenant(slug="bench", name="Bench"), actor="bench")
key, _ = services.api_key_create(tenant=tenant, name="bench", actor="bench", secret="{KEY}")
if {quota!r}:
    from tenants.models import Quota
    # Limits high enough never to refuse: the bench measures the cost of enforcing them.
    for scope in ({{"api_key": key}}, {{"tenant": tenant}}):
        services.quota_save(quota=Quota(**scope, rpm_limit=10_000_000, tpm_limit=10_000_000,
                            max_parallel_requests=10_000, max_budget=1_000_000), actor="bench")
if {quota_key!r}:
    from tenants.models import Quota
    tenant_q = services.tenant_save(tenant=Tenant(slug="benchq", name="Bench with quotas"), actor="bench")
    key_q, _ = services.api_key_create(tenant=tenant_q, name="benchq", actor="bench", secret="{QUOTA_KEY}")
    for scope in ({{"api_key": key_q}}, {{"tenant": tenant_q}}):
        services.quota_save(quota=Quota(**scope, rpm_limit=10_000_000, tpm_limit=10_000_000,
                            max_parallel_requests=10_000, max_budget=1_000_000), actor="bench")
deployment_save(deployment=ModelDeployment(model_name="gpt-4o-mini", litellm_model="openai/gpt-4o-mini",
                api_base="{upstream}", api_key="sk-fake"), actor="bench")
"""
    subprocess.run([python, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)


def upstream_start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "fake_upstream", "--port", str(port), "--chunks", str(CHUNKS), "--gap-ms", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def gateway_start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), APPLICATION],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
