"""Benchmark: the fake upstream directly vs through one daphne process of the gateway, same run.

    .venv/bin/python bench/run.py [--seconds 8] [--runs 3] [--streams 200] [--redis URL]

Prints a Markdown table and writes bench/results/<timestamp>.json. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_platform.processes import http_wait  # noqa: E402

KEY = "sk-bench-0123456789abcdefghijklmnop"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
CHUNKS, GAP_MS = 20, 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup(env: dict[str, str], upstream: str, *, quota: bool) -> None:
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
deployment_save(deployment=ModelDeployment(model_name="gpt-4o-mini", litellm_model="openai/gpt-4o-mini",
                api_base="{upstream}", api_key="sk-fake"), actor="bench")
"""
    subprocess.run([python, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s", str(ROOT / "bench" / "post.lua"), url],
        env={**os.environ, "BENCH_KEY": KEY},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(next(line for line in out.splitlines() if line.startswith("JSON ")).removeprefix("JSON "))
    data["rps"] = data["requests"] / data["seconds"]
    return data


def overhead_header_median(url: str, count: int = 300) -> float:
    values = []
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        for _ in range(count):
            response = client.post(url, json=BODY)
            values.append(float(response.headers["x-gateway-overhead-ms"]))
    return statistics.median(values)


async def streams(url: str, count: int, concurrency: int) -> dict[str, list[float]]:
    """TTFB of the first content chunk and the gaps between content chunks, for ``count`` streams."""
    ttfb: list[float] = []
    gaps: list[float] = []
    # The fake upstream's directive sets the chunk count and gap for these requests only.
    directive = f"[[fake chunks={CHUNKS} gap_ms={GAP_MS:g}]]"
    body = {**BODY, "stream": True, "messages": [{"role": "user", "content": directive}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    queue = list(range(count))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            queue.pop()
            started = time.perf_counter()
            last = None
            async with session.post(url, json=body, headers=headers) as response:
                async for line in response.content:
                    if not line.startswith(b"data: ") or b"[DONE]" in line:
                        continue
                    now = time.perf_counter()
                    if b'"content": "' not in line or b'"content": ""' in line:
                        continue  # the role-only opening chunk and the finish chunk
                    if last is None:
                        ttfb.append((now - started) * 1000)
                    else:
                        gaps.append((now - last) * 1000)
                    last = now

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"ttfb": ttfb, "gaps": gaps}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--stream-concurrency", type=int, default=2)
    parser.add_argument("--redis", default="", help="run the gateway with this REDIS_URL")
    parser.add_argument("--quota", action="store_true", help="give the bench key and tenant (never-reached) quotas")
    parser.add_argument(
        "--database", default="", help="run the gateway with this DATABASE_URL, an existing database it may empty"
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required (Debian: apt-get install wrk)")

    var = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    env["DATABASE_URL"] = args.database or f"sqlite:///{var / 'db.sqlite3'}"
    if args.redis:
        env["REDIS_URL"] = args.redis
    up_port, gw_port = free_port(), free_port()
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    setup(env, f"http://127.0.0.1:{up_port}/v1", quota=args.quota)
    python = sys.executable
    processes = [
        subprocess.Popen(
            [python, "manage.py", "fake_upstream", "--port", str(up_port), "--chunks", str(CHUNKS), "--gap-ms", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(gw_port), "llm_platform.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    results: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(),
        "redis": bool(args.redis),
        "database": "postgresql" if args.database else "sqlite",
        "quota": args.quota,
        "cpus": os.cpu_count(),
    }
    try:
        http_wait(f"http://127.0.0.1:{up_port}/healthz", processes[0])
        http_wait(f"http://127.0.0.1:{gw_port}/healthz", processes[1])
        for url in (direct, gateway):  # warm-up: connections, caches, lazy imports
            wrk(url, 16, 3)
        c1 = {
            name: [wrk(url, 1, args.seconds) for _ in range(args.runs)]
            for name, url in (("direct", direct), ("gateway", gateway))
        }
        c16 = {
            name: [wrk(url, 16, args.seconds) for _ in range(args.runs)]
            for name, url in (("direct", direct), ("gateway", gateway))
        }
        header = overhead_header_median(gateway)
        streamed_direct = asyncio.run(streams(direct, args.streams, args.stream_concurrency))
        streamed_gateway = asyncio.run(streams(gateway, args.streams, args.stream_concurrency))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        shutil.rmtree(var, ignore_errors=True)

    def med(runs: list[dict[str, float]], field: str) -> float:
        return statistics.median(run[field] for run in runs)

    p50_direct, p50_gateway = med(c1["direct"], "p50_us") / 1000, med(c1["gateway"], "p50_us") / 1000
    p95_direct, p95_gateway = med(c1["direct"], "p95_us") / 1000, med(c1["gateway"], "p95_us") / 1000
    rps_direct, rps_gateway = med(c16["direct"], "rps"), med(c16["gateway"], "rps")
    errors = sum(run["non2xx"] + run["errors"] for runs in (c1["gateway"], c16["gateway"]) for run in runs)
    ttfb_d, ttfb_g = streamed_direct["ttfb"], streamed_gateway["ttfb"]
    gap_spread_d = statistics.pstdev(streamed_direct["gaps"]) / GAP_MS * 100
    gap_spread_g = statistics.pstdev(streamed_gateway["gaps"]) / GAP_MS * 100
    ttfb_overhead_p50 = statistics.median(ttfb_g) - statistics.median(ttfb_d)
    ttfb_overhead_p95 = percentile(ttfb_g, 95) - percentile(ttfb_d, 95)
    rows = [
        (
            "Non-streaming latency, c=1, median (ms)",
            f"{p50_direct:.2f}",
            f"{p50_gateway:.2f}",
            f"+{p50_gateway - p50_direct:.2f} ms",
            "≤ 2.5 ms overhead",
            p50_gateway - p50_direct <= 2.5,
        ),
        (
            "Non-streaming latency, c=1, p95 (ms)",
            f"{p95_direct:.2f}",
            f"{p95_gateway:.2f}",
            f"+{p95_gateway - p95_direct:.2f} ms",
            "",
            None,
        ),
        ("Gateway's own x-gateway-overhead-ms, c=1, median", "", f"{header:.3f}", "", "", None),
        (
            "Requests/s, c=16",
            f"{rps_direct:.0f}",
            f"{rps_gateway:.0f}",
            f"{rps_gateway / rps_direct:.2f}x",
            "≥ 450 req/s",
            rps_gateway >= 450,
        ),
        (
            f"Streaming TTFB, median / p95 (ms), c={args.stream_concurrency}",
            f"{statistics.median(ttfb_d):.2f} / {percentile(ttfb_d, 95):.2f}",
            f"{statistics.median(ttfb_g):.2f} / {percentile(ttfb_g, 95):.2f}",
            f"+{ttfb_overhead_p50:.2f} / +{ttfb_overhead_p95:.2f} ms",
            "p95 overhead ≤ 10 ms",
            ttfb_overhead_p95 <= 10,
        ),
        (
            f"Chunk-gap std, % of the {GAP_MS:g} ms upstream gap",
            f"{gap_spread_d:.1f}%",
            f"{gap_spread_g:.1f}%",
            f"{gap_spread_g - gap_spread_d:+.1f} pts",
            "≤ 5%",
            gap_spread_g <= 5,
        ),
    ]
    table = ["| Metric | Direct | Gateway | Overhead | Target | Met |", "|---|---|---|---|---|---|"]
    for name, d, g, o, target, met in rows:
        table.append(f"| {name} | {d} | {g} | {o} | {target} | {'' if met is None else ('yes' if met else 'no')} |")
    print("\n".join(table))
    print(f"\ngateway errors during load: {errors}")
    results.update(
        c1=c1,
        c16=c16,
        overhead_header_median_ms=header,
        errors=errors,
        ttfb_direct=ttfb_d,
        ttfb_gateway=ttfb_g,
        gap_spread_direct_pct=gap_spread_d,
        gap_spread_gateway_pct=gap_spread_g,
        table=table,
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
