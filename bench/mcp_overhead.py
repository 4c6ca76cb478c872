"""Benchmark: gateway overhead per MCP ``tools/call`` vs calling the SDK upstream server directly, same run.

    .venv/bin/python bench/mcp_overhead.py [--calls 500] [--runs 3] [--redis URL] [--database URL]

Both sides get the same stateless (2026-07-28) JSON-RPC POSTs over one kept-alive HTTP
connection, one at a time; the gateway's path adds key auth, grant check, quota reserve,
the relay over its pooled SDK client session and the deferred audit event. Prints a
Markdown table of medians and p95s and the median overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from mcp_setup import KEY, UPSTREAM_TOKEN, deployment

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def timed_calls(url: str, token: str, tool: str, count: int) -> list[float]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": "hi"}, "_meta": META},
    }
    samples = []
    with httpx.Client(headers=headers, timeout=30) as http:
        for _ in range(count):
            started = time.perf_counter()
            response = http.post(url, json=body)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200 or "result" not in response.json():
                raise SystemExit(f"{url}: unexpected answer {response.status_code} {response.text[:300]}")
    return samples


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="")
    parser.add_argument("--database", default="", help="an existing database the bench may empty")
    args = parser.parse_args()
    with deployment(database=args.database, redis=args.redis) as live:
        gateway = f"{live.gateway_url}/mcp"
        timed_calls(live.upstream_url, UPSTREAM_TOKEN, "echo", 100)  # warm-up
        timed_calls(gateway, KEY, "demo.echo", 100)
        direct, through = [], []
        for _ in range(args.runs):  # interleaved, so drifting machine load hits both sides alike
            direct += timed_calls(live.upstream_url, UPSTREAM_TOKEN, "echo", args.calls)
            through += timed_calls(gateway, KEY, "demo.echo", args.calls)
    d_med, g_med = statistics.median(direct), statistics.median(through)
    print(
        f"\n{len(direct)} calls each, {'Redis' if args.redis else 'no Redis'}, "
        f"{'PostgreSQL' if args.database else 'SQLite'}\n"
    )
    print("| tools/call | median ms | p95 ms |")
    print("|---|---|---|")
    print(f"| upstream directly | {d_med:.2f} | {p95(direct):.2f} |")
    print(f"| through the gateway | {g_med:.2f} | {p95(through):.2f} |")
    print(f"| **overhead** | **{g_med - d_med:.2f}** | {p95(through) - p95(direct):.2f} |")


if __name__ == "__main__":
    main()
