"""Benchmark: what routing costs per request for each strategy, and failover under load.

    .venv/bin/python bench/routing.py [--requests 400] [--inproc 5000] [--redis URL] [--database URL]

1. In process: the routing code alone (``RouteRun`` start + execute + release around a
   no-op upstream call), per strategy, timed sequentially; with ``--redis`` it also counts
   Redis round trips per request, sequentially and with 32 requests overlapping (2 ms each).
2. Through one daphne process, same run: c=1 latency of the fake upstream directly, of a
   single-deployment model, and of a two-deployment group per strategy, requests taken in
   turns; plus the ``decision_ms`` the decision records report.
3. Failover: 16 clients on a two-deployment group; one upstream process is killed
   (SIGKILL) mid-run. Counts requests lost (non-200) and how long the dead one was tried.

Prints Markdown tables and writes bench/results/routing-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_env import bench_env, free_port  # noqa: E402

from llm_platform.processes import http_wait  # noqa: E402

KEY = "sk-bench-routing-0123456789abcdef"
STRATEGIES = (
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "cost-based-routing",
    "usage-based-routing-v2",
)


SETUP = """
from tenants.models import Tenant
from tenants import services
from routing.models import ModelDeployment, RouteGroup
from routing.services import deployment_save, route_group_save
tenant = services.tenant_save(tenant=Tenant(slug="bench", name="Bench"), actor="bench")
services.api_key_create(tenant=tenant, name="bench", actor="bench", secret=KEY)
def group(name, bases, strategy, **policy):
    for index, base in enumerate(bases):
        params = {"weight": 1 + index, "rpm": 10_000_000, "tpm": 10_000_000_000,
                  "input_cost_per_token": 1e-6 * (index + 1), "output_cost_per_token": 2e-6 * (index + 1)}
        deployment_save(deployment=ModelDeployment(model_name=name, litellm_model=f"openai/{name}-{index}",
                        api_base=base, extra_params=params), actor="bench")
    route_group_save(group=RouteGroup(model_name=name, routing_strategy=strategy, **policy), actor="bench")
group("single", BASES[:1], "simple-shuffle")
for strategy in STRATEGIES:
    group(strategy, BASES, strategy)
group("failover", BASES, "simple-shuffle", num_retries=2, retry_after=0.01, allowed_fails=3, cooldown_time=60)
"""


def setup(env: dict[str, str], bases: list[str]) -> None:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([python, "manage.py", "flush", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    script = f"KEY = {KEY!r}\nBASES = {bases!r}\nSTRATEGIES = {STRATEGIES!r}\n" + SETUP
    subprocess.run([python, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)


async def in_process(strategy: str, count: int, concurrency: int) -> dict[str, float]:
    """Median seconds of routing code per request and Redis round trips per request."""
    from routing.router import RouteRun, route_state
    from tenants.auth import KeyContext

    key = KeyContext(0, "", 0, "bench", True, frozenset(), None, False)
    samples: list[float] = []
    pause = 0.002 if concurrency > 1 else 0.0

    async def call(target: object) -> None:
        if pause:
            await asyncio.sleep(pause)

    async def worker(share: int) -> None:
        for _ in range(share):
            run = RouteRun(key=key, stream=False, tokens=12)
            started = time.perf_counter()
            await run.start(strategy)
            await run.execute(call)
            run.release(latency_ms=2.0, ttft_ms=None, tokens=8)
            # Overlapping requests interleave on the loop, so their wall times mean little;
            # sequential ones (no pause) time the routing code itself.
            samples.append(time.perf_counter() - started - pause)

    state = route_state()
    await worker(50)  # warm-up: deployment cache, Redis connection
    samples.clear()
    trips = getattr(state, "round_trips", 0)
    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    if hasattr(state, "flush"):
        await state.flush()
    done = len(samples)
    return {
        "median_ms": statistics.median(samples) * 1000,
        "p95_ms": statistics.quantiles(samples, n=20)[18] * 1000,
        "round_trips_per_request": (getattr(state, "round_trips", 0) - trips) / done,
    }


def interleaved(urls: dict[str, tuple[str, str]], count: int) -> dict[str, tuple[list[float], list[str]]]:
    """``count`` sequential requests per target, taken in turns so every target sees the same
    background noise (the machine is shared); returns latencies (ms) and request ids."""
    results: dict[str, tuple[list[float], list[str]]] = {name: ([], []) for name in urls}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        for _ in range(count):
            for name, (url, model) in urls.items():
                body = {"model": model, "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
                started = time.perf_counter()
                response = client.post(url, json=body)
                results[name][0].append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                results[name][1].append(response.headers.get("x-request-id", ""))
    return results


async def load(url: str, seconds: float, concurrency: int, kill_at: float, kill: object) -> dict[str, object]:
    body = {"model": "failover", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    results: list[tuple[float, float, int]] = []
    started = time.perf_counter()
    killed_at: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() - started < seconds:
            sent = time.perf_counter()
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            results.append((sent - started, (time.perf_counter() - sent) * 1000, status))

    async def killer() -> None:
        await asyncio.sleep(kill_at)
        killed_at.append(time.perf_counter() - started)
        kill()  # type: ignore[operator]

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(killer(), *(worker(session) for _ in range(concurrency)))
    after = [latency for at, latency, _ in results if at >= killed_at[0]]
    before = [latency for at, latency, _ in results if at < killed_at[0]]
    return {
        "requests": len(results),
        "lost": sum(1 for _, _, status in results if status != 200),
        "killed_at_s": killed_at[0],
        "p50_before_ms": statistics.median(before),
        "p99_before_ms": statistics.quantiles(before, n=100)[98],
        "p50_after_ms": statistics.median(after),
        "p99_after_ms": statistics.quantiles(after, n=100)[98],
        "max_after_ms": max(after),
        "rps": len(results) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per model through daphne")
    parser.add_argument("--inproc", type=int, default=5000, help="routed requests per strategy in process")
    parser.add_argument("--failover-seconds", type=float, default=8)
    parser.add_argument("--redis", default="", help="shared routing state in this Redis (REDIS_URL)")
    parser.add_argument("--database", default="", help="DATABASE_URL of a database the bench may empty")
    args = parser.parse_args()

    _, env = bench_env(
        "bench-routing-", database=args.database, redis=args.redis, log_level="ERROR", USAGE_FLUSH_INTERVAL="0.2"
    )
    if args.redis:
        env["CACHE_KEY_PREFIX"] = f"bench{int(time.time())}"
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{port}/v1" for port in ports]
    setup(env, bases)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
    import django

    django.setup()
    from routing.models import RequestLog

    python = sys.executable
    upstreams = [
        subprocess.Popen(
            [python, "manage.py", "fake_upstream", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    gw_port = free_port()
    gateway = subprocess.Popen(
        [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(gw_port), "llm_platform.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(),
        "redis": bool(args.redis),
        "database": "postgresql" if args.database else "sqlite",
        "cpus": os.cpu_count(),
    }
    try:
        for process, port in zip(upstreams, ports, strict=True):
            http_wait(f"http://127.0.0.1:{port}/healthz", process, timeout=120)
        http_wait(f"http://127.0.0.1:{gw_port}/healthz", gateway, timeout=120)

        inproc: dict[str, dict[str, dict[str, float]]] = {}
        for strategy in STRATEGIES:
            inproc[strategy] = {
                "sequential": asyncio.run(in_process(strategy, args.inproc, 1)),
                "concurrent": asyncio.run(in_process(strategy, args.inproc, 32)),
            }
        results["in_process"] = inproc

        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        targets = {"direct": (f"{bases[0]}/chat/completions", "single")}
        targets.update({model: (url, model) for model in ("single", *STRATEGIES)})
        interleaved(targets, 50)  # warm-up
        measured = interleaved(targets, args.requests)
        direct = measured.pop("direct")[0]
        through: dict[str, dict[str, float]] = {
            model: {"median_ms": statistics.median(latencies), "ids": ids}  # type: ignore[dict-item]
            for model, (latencies, ids) in measured.items()
        }
        time.sleep(1.0)  # let the usage writer store the last decision records
        for row in through.values():
            decisions = RequestLog.objects.filter(request_id__in=row.pop("ids")).values_list(  # type: ignore[arg-type]
                "route_decision", flat=True
            )
            row["decision_ms"] = statistics.median(d["decision_ms"] for d in decisions if d)
        results["direct_median_ms"] = statistics.median(direct)
        results["through_gateway"] = through

        results["failover"] = asyncio.run(
            load(
                url,
                args.failover_seconds,
                16,
                args.failover_seconds / 3,
                lambda: upstreams[1].send_signal(signal.SIGKILL),
            )
        )
        time.sleep(1.0)
        dead = "openai/failover-1"
        tried = [
            log.created_at
            for log in RequestLog.objects.filter(model_requested="failover").only("created_at", "route_decision")
            if any(a["deployment"] == log.route_decision["candidates"][1]["id"] for a in log.route_decision["attempts"])
            and log.route_decision["candidates"][1]["model"] == dead
        ]
        results["failover"]["requests_that_met_the_dead_deployment"] = len(tried)  # type: ignore[index]
        if tried:
            results["failover"]["dead_tried_for_ms"] = (max(tried) - min(tried)).total_seconds() * 1000  # type: ignore[index]
    finally:
        for process in (*upstreams, gateway):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"routing-{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(json.dumps(results, indent=2))
    direct_ms = results["direct_median_ms"]
    print(f"\nRouting cost ({results['database']}{' + Redis' if args.redis else ''}; {os.cpu_count()} CPUs)\n")
    print(
        "| Strategy | Routing code in process, median (ms) | Redis round trips / request, sequential / 32 overlapping"
        " | Through daphne, c=1, median (ms) | vs single deployment | decision_ms in records, median |"
    )
    print("|---|---|---|---|---|---|")
    single = through["single"]
    print(f"| direct upstream (same run) | | | {direct_ms:.3f} | | |")
    print(f"| single deployment | | | {single['median_ms']:.3f} | | {single['decision_ms']:.4f} |")
    for strategy in STRATEGIES:
        seq, conc = inproc[strategy]["sequential"], inproc[strategy]["concurrent"]
        row = through[strategy]
        print(
            f"| {strategy} | {seq['median_ms']:.4f} | "
            f"{seq['round_trips_per_request']:.3f} / {conc['round_trips_per_request']:.3f} | "
            f"{row['median_ms']:.3f} | {row['median_ms'] - single['median_ms']:+.3f} ms | {row['decision_ms']:.4f} |"
        )
    failover = results["failover"]
    print("\nFailover (16 clients, one of two upstreams SIGKILLed at", f"{failover['killed_at_s']:.1f} s)\n")  # type: ignore[index]
    print(json.dumps(failover, indent=2))


if __name__ == "__main__":
    main()
