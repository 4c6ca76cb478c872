"""The load bench/run.py puts on a server and what it measures: wrk rounds, timed sequences, streams, CPU."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
from chat_gateway import BODY, CHUNKS, GAP_MS, KEY, QUOTA_KEY, ROOT


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
