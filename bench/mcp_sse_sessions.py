"""Benchmark: idle legacy-SSE sessions one gateway process holds, and its memory (RSS) while holding them.

    .venv/bin/python bench/mcp_sse_sessions.py [--sessions 2000] [--redis URL] [--database URL]

Opens the sessions with aiohttp, checks every stream got its ``endpoint`` event, then
that a request on one of them is still answered on its stream while all are open; reports
the gateway's RSS before and after and per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from mcp_setup import KEY, deployment, rss_mib


async def open_session(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, str]:
    response = await http.get(url, headers={"Authorization": f"Bearer {KEY}"})
    if response.status != 200:
        raise SystemExit(f"stream refused: {response.status} {await response.text()}")
    event = (await response.content.readline()).decode().strip()
    data = (await response.content.readline()).decode().strip()
    assert event == "event: endpoint", event
    return response, data.removeprefix("data: ")


async def hold(base: str, count: int, pid: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        before = rss_mib(pid)
        started = time.perf_counter()
        opened: list[tuple[aiohttp.ClientResponse, str]] = []
        for start in range(0, count, 100):  # in waves, so the accept backlog never overflows
            wave = range(start, min(count, start + 100))
            opened += await asyncio.gather(*(open_session(http, f"{base}/mcp/sse") for _ in wave))
        open_seconds = time.perf_counter() - started
        await asyncio.sleep(3)  # idle: heartbeats only
        held = rss_mib(pid)
        response, endpoint = opened[len(opened) // 2]
        ping = {"jsonrpc": "2.0", "id": 42, "method": "ping"}
        async with http.post(f"{base}{endpoint}", json=ping, headers={"Authorization": f"Bearer {KEY}"}) as posted:
            assert posted.status == 202, posted.status
        while True:
            line = (await response.content.readline()).decode().strip()
            if line.startswith("data: "):
                assert json.loads(line.removeprefix("data: ")) == {"jsonrpc": "2.0", "id": 42, "result": {}}, line
                break
        for response, _ in opened:
            response.close()
    return {"open_seconds": open_seconds, "rss_before": before, "rss_held": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--redis", default="")
    parser.add_argument("--database", default="", help="an existing database the bench may empty")
    args = parser.parse_args()
    extra = {"MCP_MAX_STREAMS_PER_TENANT": str(args.sessions + 10), "MCP_SSE_HEARTBEAT": "15"}
    with deployment(database=args.database, redis=args.redis, extra_env=extra) as live:
        result = asyncio.run(hold(live.gateway_url, args.sessions, live.gateway_pid))
    per_session_kib = (result["rss_held"] - result["rss_before"]) * 1024 / args.sessions
    print(f"\n{'Redis' if args.redis else 'no Redis'}, {'PostgreSQL' if args.database else 'SQLite'}\n")
    print("| idle legacy-SSE sessions | opened in s | RSS before MiB | RSS holding MiB | per session KiB |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.sessions} (all answered) | {result['open_seconds']:.1f} | {result['rss_before']:.0f} | "
        f"{result['rss_held']:.0f} | {per_session_kib:.1f} |"
    )


if __name__ == "__main__":
    main()
