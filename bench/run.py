"""Benchmark: the fake upstream directly vs through one daphne process of the gateway, same run.

    .venv/bin/python bench/run.py [--seconds 8] [--runs 3] [--streams 200] [--redis URL]
    .venv/bin/python bench/run.py --quota-compare [--runs 5] [--redis URL --database URL]
    .venv/bin/python bench/run.py --durability-compare [--runs 5] [--redis URL --database URL]

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
QUOTA_KEY = "sk-benchq-0123456789abcdefghijklmno"  # --quota-compare: a second tenant, with quotas
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
CHUNKS, GAP_MS = 20, 10.0
APPLICATION = "llm_platform.asgi:application"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wrk(url: str, connections: int, seconds: float, key: str = KEY) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s", str(ROOT / "bench" / "post.lua"), url],
        env={**os.environ, "BENCH_KEY": key},
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(url: str) -> float:
    """The Redis server's own CPU time (INFO cpu); it counts every client of that server."""
    import redis

    with redis.Redis.from_url(url) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def sequential(url: str, key: str, count: int) -> list[float]:
    """Latency of ``count`` requests sent one after another on one keep-alive connection (ms).

    Timed request by request, unlike wrk's c=1 histogram, which is corrected for coordinated
    omission and adds synthetic samples after each slow response.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = json.dumps(BODY).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", parts.path, body, headers)
            response = connection.getresponse()
            response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}")
    finally:
        connection.close()
    return times


def quota_compare(args: argparse.Namespace, gateway: str, gateway_pid: int) -> dict[str, object]:
    """Interleave rounds without and with quotas against the same server process.

    Two keys of two tenants: one without limits, one (and its tenant) with never-reached
    rpm, tpm, concurrency and budget limits. Each round measures both, in alternating order,
    so machine noise falls on both alike. Besides req/s, the gateway process's CPU time per
    request (and the Redis server's) is far less sensitive to other load on the machine.
    """
    names = {"none": KEY, "quota": QUOTA_KEY}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_index in range(args.runs):
        order = list(names) if round_index % 2 == 0 else list(reversed(names))
        for name in order:
            key = names[name]
            times = sequential(gateway, key, args.sequential)
            cpu0 = cpu_seconds(gateway_pid)
            redis0 = redis_cpu_seconds(args.redis) if args.redis else 0.0
            result = wrk(gateway, 16, args.seconds, key)
            cpu1 = cpu_seconds(gateway_pid)
            redis1 = redis_cpu_seconds(args.redis) if args.redis else 0.0
            served = result["requests"]
            rounds[name].append(
                {
                    "rps": result["rps"],
                    "errors": result["non2xx"] + result["errors"],
                    "cpu_us_per_request": (cpu1 - cpu0) / served * 1e6,
                    "redis_cpu_us_per_request": (redis1 - redis0) / served * 1e6,
                    "c1_p50_ms": statistics.median(times),
                    "c1_p95_ms": percentile(times, 95),
                    "c1_p99_ms": percentile(times, 99),
                }
            )
            print(f"round {round_index + 1} {name}: {json.dumps(rounds[name][-1])}", file=sys.stderr)
    return rounds


def quota_compare_table(rounds: dict[str, list[dict[str, float]]], redis: bool) -> list[str]:
    def med(name: str, field: str) -> float:
        return statistics.median(run[field] for run in rounds[name])

    rps_ratio = statistics.median(
        quota["rps"] / none["rps"] for none, quota in zip(rounds["none"], rounds["quota"], strict=True)
    )
    added_p50 = med("quota", "c1_p50_ms") - med("none", "c1_p50_ms")
    rows = [
        ("Latency, c=1, median (ms)", "c1_p50_ms", "{:.2f}", f"+{added_p50:.2f} ms", "≤ 0.5 ms", added_p50 <= 0.5),
        ("Latency, c=1, p95 (ms)", "c1_p95_ms", "{:.2f}", "", "", None),
        ("Latency, c=1, p99 (ms)", "c1_p99_ms", "{:.2f}", "", "", None),
        (
            "Requests/s, c=16",
            "rps",
            "{:.0f}",
            f"{(rps_ratio - 1) * 100:+.0f}% (median of per-round ratios)",
            "within 15%",
            rps_ratio >= 0.85,
        ),
        ("Gateway CPU per request, c=16 (µs)", "cpu_us_per_request", "{:.0f}", None, "", None),
    ]
    if redis:
        rows.append(("Redis server CPU per request, c=16 (µs)", "redis_cpu_us_per_request", "{:.0f}", None, "", None))
    table = ["| Metric | No quotas | With quotas | Added | Target | Met |", "|---|---|---|---|---|---|"]
    for label, field, fmt, added, target, met in rows:
        none, quota = med("none", field), med("quota", field)
        if added is None:
            added = f"{quota - none:+.0f} µs ({(quota / none - 1) * 100:+.0f}%)"
        met_text = "" if met is None else ("yes" if met else "no")
        table.append(f"| {label} | {fmt.format(none)} | {fmt.format(quota)} | {added} | {target} | {met_text} |")
    return table


def durability_compare(args: argparse.Namespace, gateways: dict[str, tuple[str, int]]) -> dict[str, object]:
    """Interleave rounds on two gateway processes that differ only in USAGE_DURABILITY (batch, journal).

    As ``quota_compare``: per round, c=1 latency timed request by request, then req/s and the
    gateway process's CPU per request at c=16, the two processes in alternating order.
    """
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in gateways}
    for round_index in range(args.runs):
        order = list(gateways) if round_index % 2 == 0 else list(reversed(gateways))
        for name in order:
            url, pid = gateways[name]
            times = sequential(url, KEY, args.sequential)
            cpu0 = cpu_seconds(pid)
            result = wrk(url, 16, args.seconds)
            cpu1 = cpu_seconds(pid)
            rounds[name].append(
                {
                    "rps": result["rps"],
                    "errors": result["non2xx"] + result["errors"],
                    "cpu_us_per_request": (cpu1 - cpu0) / result["requests"] * 1e6,
                    "c1_p50_ms": statistics.median(times),
                    "c1_p95_ms": percentile(times, 95),
                    "c1_p99_ms": percentile(times, 99),
                }
            )
            print(f"round {round_index + 1} {name}: {json.dumps(rounds[name][-1])}", file=sys.stderr)
    return rounds


def durability_compare_table(rounds: dict[str, list[dict[str, float]]]) -> list[str]:
    def med(name: str, field: str) -> float:
        return statistics.median(run[field] for run in rounds[name])

    rps_ratio = statistics.median(
        journal["rps"] / batch["rps"] for batch, journal in zip(rounds["batch"], rounds["journal"], strict=True)
    )
    table = ["| Metric | batch | journal | Added |", "|---|---|---|---|"]
    for label, field, fmt in (
        ("Latency, c=1, median (ms)", "c1_p50_ms", "{:.2f}"),
        ("Latency, c=1, p95 (ms)", "c1_p95_ms", "{:.2f}"),
        ("Latency, c=1, p99 (ms)", "c1_p99_ms", "{:.2f}"),
        ("Requests/s, c=16", "rps", "{:.0f}"),
        ("Gateway CPU per request, c=16 (µs)", "cpu_us_per_request", "{:.0f}"),
    ):
        batch, journal = med("batch", field), med("journal", field)
        if field == "rps":
            added = f"{(rps_ratio - 1) * 100:+.0f}% (median of per-round ratios)"
        elif field.endswith("_ms"):
            added = f"{journal - batch:+.2f} ms"
        else:
            added = f"{journal - batch:+.0f} µs ({(journal / batch - 1) * 100:+.0f}%)"
        table.append(f"| {label} | {fmt.format(batch)} | {fmt.format(journal)} | {added} |")
    return table


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
    parser.add_argument(
        "--quota-compare",
        action="store_true",
        help="only the cost of quotas: a key without and a key with quotas, interleaved rounds on one server",
    )
    parser.add_argument(
        "--durability-compare",
        action="store_true",
        help="only the cost of USAGE_DURABILITY=journal: a batch and a journal gateway, interleaved rounds",
    )
    parser.add_argument("--sequential", type=int, default=1000, help="requests timed one by one per round (c=1)")
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
    up_port, gw_port, journal_port = free_port(), free_port(), free_port()
    if args.durability_compare:
        env["USAGE_DURABILITY"] = "batch"  # the second gateway, started below, journals
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    setup(env, f"http://127.0.0.1:{up_port}/v1", quota=args.quota, quota_key=args.quota_compare)
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
    if args.durability_compare:
        processes.append(
            subprocess.Popen(
                [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(journal_port), APPLICATION],
                cwd=ROOT,
                env={**env, "USAGE_DURABILITY": "journal"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
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
        journal_gateway = f"http://127.0.0.1:{journal_port}/v1/chat/completions"
        if args.durability_compare:
            http_wait(f"http://127.0.0.1:{journal_port}/healthz", processes[2])
        for url in (direct, gateway, *([journal_gateway] if args.durability_compare else [])):
            wrk(url, 16, 3)  # warm-up: connections, caches, lazy imports
        if args.durability_compare:
            rounds = durability_compare(
                args, {"batch": (gateway, processes[1].pid), "journal": (journal_gateway, processes[2].pid)}
            )
        elif args.quota_compare:
            wrk(gateway, 16, 3, QUOTA_KEY)
            rounds = quota_compare(args, gateway, processes[1].pid)
        else:
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

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    if args.durability_compare:
        table = durability_compare_table(rounds)
        print("\n".join(table))
        errors = sum(run["errors"] for runs in rounds.values() for run in runs)
        print(f"\ngateway errors during load: {errors}")
        results.update(rounds=rounds, table=table, seconds=args.seconds, sequential=args.sequential)
        (out / f"{dt.datetime.now():%Y%m%d-%H%M%S}-durability.json").write_text(json.dumps(results, indent=1))
        return
    if args.quota_compare:
        table = quota_compare_table(rounds, bool(args.redis))
        print("\n".join(table))
        errors = sum(run["errors"] for runs in rounds.values() for run in runs)
        print(f"\ngateway errors during load: {errors}")
        results.update(rounds=rounds, table=table, seconds=args.seconds, sequential=args.sequential)
        (out / f"{dt.datetime.now():%Y%m%d-%H%M%S}-quota.json").write_text(json.dumps(results, indent=1))
        return

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
    (out / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
