"""Benchmark: the cost of quota enforcement, measured on one gateway process in one run.

    .venv/bin/python bench/quota.py [--seconds 6] [--rounds 5] [--redis URL] [--database URL]

One daphne process serves two tenants: one whose key and tenant carry never-reached rpm,
tpm, concurrency and monthly-budget limits (8 counters checked and reserved per request),
and one with no quotas. wrk drives each key in turn, interleaved round by round, so both
see the same machine. Reported: requests/s at c=16 and latency at c=1 (medians over the
rounds), and CPU per request of the gateway and of the Redis server (from /proc), which
is far less sensitive to other load on the machine than wall-clock throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import free_port, wrk  # noqa: E402
from llm_platform.processes import http_wait  # noqa: E402

PLAIN_KEY = "sk-bench-plain-0123456789abcdefghijkl"
QUOTA_KEY = "sk-bench-quota-0123456789abcdefghijkl"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def setup(env: dict[str, str], upstream: str) -> None:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([python, "manage.py", "flush", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    script = f"""
from tenants.models import Quota, Tenant
from tenants import services
from routing.models import ModelDeployment
from routing.services import deployment_save
plain = services.tenant_save(tenant=Tenant(slug="plain", name="Plain"), actor="bench")
services.api_key_create(tenant=plain, name="plain", actor="bench", secret="{PLAIN_KEY}")
limited = services.tenant_save(tenant=Tenant(slug="limited", name="Limited"), actor="bench")
key, _ = services.api_key_create(tenant=limited, name="limited", actor="bench", secret="{QUOTA_KEY}")
for scope in ({{"api_key": key}}, {{"tenant": limited}}):
    services.quota_save(quota=Quota(**scope, rpm_limit=10_000_000, tpm_limit=10_000_000,
                        max_parallel_requests=10_000, max_budget=1_000_000), actor="bench")
deployment_save(deployment=ModelDeployment(model_name="gpt-4o-mini", litellm_model="openai/gpt-4o-mini",
                api_base="{upstream}", api_key="sk-fake"), actor="bench")
"""
    subprocess.run([python, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def redis_pid(url: str) -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(url).info("server")["process_id"])
    except Exception:
        return None


def measure(url: str, key: str, connections: int, seconds: float, pids: dict[str, int | None]) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
    result = wrk(url, connections, seconds, key)
    for name, pid in pids.items():
        if pid:
            result[f"{name}_cpu_us_per_req"] = (cpu_seconds(pid) - before[name]) / max(1, result["requests"]) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", default="", help="run the gateway with this REDIS_URL")
    parser.add_argument("--database", default="", help="an existing database the bench may empty")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required (Debian: apt-get install wrk)")

    var = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "LOG_LEVEL": "WARNING",
        "SECRET_KEY": "bench-only-secret",
        "DATABASE_URL": args.database or f"sqlite:///{var / 'db.sqlite3'}",
    }
    env.pop("REDIS_URL", None)
    if args.redis:
        env["REDIS_URL"] = args.redis
    up_port, gw_port = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    setup(env, f"http://127.0.0.1:{up_port}/v1")
    python = sys.executable
    upstream = subprocess.Popen(
        [python, "manage.py", "fake_upstream", "--port", str(up_port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    server = subprocess.Popen(
        [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(gw_port), "llm_platform.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    pids = {"gateway": server.pid, "redis": redis_pid(args.redis) if args.redis else None}
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"plain": {1: [], 16: []}, "quota": {1: [], 16: []}}
    try:
        http_wait(f"http://127.0.0.1:{up_port}/healthz", upstream)
        http_wait(f"http://127.0.0.1:{gw_port}/healthz", server)
        for key in (PLAIN_KEY, QUOTA_KEY):  # warm-up: connections, caches, lazy imports
            measure(gateway, key, 16, 3, {})
        for _ in range(args.rounds):
            for name, key in (("plain", PLAIN_KEY), ("quota", QUOTA_KEY)):
                for connections in (16, 1):
                    runs[name][connections].append(measure(gateway, key, connections, args.seconds, pids))
    finally:
        for process in (server, upstream):
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(var, ignore_errors=True)

    def med(name: str, connections: int, field: str) -> float:
        return statistics.median(run.get(field, 0.0) for run in runs[name][connections])

    errors = sum(run["non2xx"] + run["errors"] for by_c in runs.values() for rs in by_c.values() for run in rs)
    rows = [
        ("Requests/s, c=16", "rps", 16, "{:.0f}"),
        ("Latency, c=1, median (ms)", "p50_us", 1, "{:.3f}"),
        ("Gateway CPU per request, c=16 (µs)", "gateway_cpu_us_per_req", 16, "{:.0f}"),
        ("Redis CPU per request, c=16 (µs)", "redis_cpu_us_per_req", 16, "{:.0f}"),
    ]
    print(f"{args.rounds} interleaved rounds of {args.seconds:g} s; medians; gateway errors: {errors}\n")
    print("| Metric | No quotas | With quotas | Change |\n|---|---|---|---|")
    for label, field, connections, fmt in rows:
        plain, quota = med("plain", connections, field), med("quota", connections, field)
        if field == "p50_us":
            plain, quota = plain / 1000, quota / 1000
            change = f"+{quota - plain:.3f} ms"
        elif plain:
            change = f"{(quota / plain - 1) * 100:+.1f}%"
        else:
            change = ""
        print(f"| {label} | {fmt.format(plain)} | {fmt.format(quota)} | {change} |")


if __name__ == "__main__":
    main()
