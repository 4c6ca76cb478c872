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
import sys

from bench_env import ROOT, bench_env, free_port
from chat_gateway import QUOTA_KEY, gateway_start, setup, upstream_start
from chat_load import durability_compare, overhead_header_median, quota_compare, streams, wrk
from chat_report import durability_compare_table, overhead_table, quota_compare_table

sys.path.insert(0, str(ROOT))

from llm_platform.processes import http_wait


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

    var, env = bench_env("bench-", database=args.database, redis=args.redis)
    up_port, gw_port, journal_port = free_port(), free_port(), free_port()
    if args.durability_compare:
        env["USAGE_DURABILITY"] = "batch"  # the second gateway, started below, journals
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    setup(env, f"http://127.0.0.1:{up_port}/v1", quota=args.quota, quota_key=args.quota_compare)
    processes = [upstream_start(env, up_port), gateway_start(env, gw_port)]
    if args.durability_compare:
        processes.append(gateway_start({**env, "USAGE_DURABILITY": "journal"}, journal_port))
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

    table, figures = overhead_table(c1, c16, header, streamed_direct, streamed_gateway, args.stream_concurrency)
    errors = figures["errors"]
    print("\n".join(table))
    print(f"\ngateway errors during load: {errors}")
    results.update(
        c1=c1,
        c16=c16,
        overhead_header_median_ms=header,
        **figures,
        table=table,
    )
    (out / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
