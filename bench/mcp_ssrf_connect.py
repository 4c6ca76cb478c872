"""Cost of SSRF pinning on upstream connections: guarded (resolve, check, connect to the checked
address) against httpx2's plain transport, in the same run.

    .venv/bin/python bench/mcp_ssrf_connect.py [--samples 400]

A small HTTP server on loopback answers 204 and closes, so every sample opens a new
connection: client created, one GET, client closed. Plain and guarded samples alternate,
for the literal 127.0.0.1 (no DNS) and for the name "localhost" (one lookup each); the
guarded client allows loopback by CIDR, so the per-address check runs. Medians in ms and
their ratio are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESPONSE = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(RESPONSE)
    await writer.drain()
    writer.close()


async def run(samples: int) -> None:
    import httpx2

    from mcp_gateway import ssrf

    server = await asyncio.start_server(answer, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    hosts = ["127.0.0.1"]
    try:  # "localhost" may also name ::1; listen there too on the same port so both clients find it
        extra = await asyncio.start_server(answer, host="::1", port=port)
        hosts.append("::1")
    except OSError:
        extra = None
    allowlist = ["127.0.0.0/8", "::1/128"]  # CIDRs, not host names: every address is checked
    timeout = httpx2.Timeout(5.0)
    # The same TLS context for both (the guarded transport builds its one once), so only the
    # connect step differs; httpx2 would otherwise load the CA bundle for every plain client.
    tls = ssrf.tls_context()

    async def once(guarded: bool, host: str) -> float:
        client = (
            ssrf.pinned_client(allowlist, timeout=timeout)
            if guarded
            else httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(verify=tls), timeout=timeout, trust_env=False)
        )
        started = time.perf_counter()
        async with client:
            response = await client.get(f"http://{host}:{port}/")
        elapsed = time.perf_counter() - started
        assert response.status_code == 204, response.status_code
        return elapsed

    async with server:
        if extra is not None:
            await extra.start_serving()
        print(f"loopback server on port {port} ({', '.join(hosts)}); {samples} samples per variant")
        print(f"{'target':<12} {'plain ms':>9} {'guarded ms':>11} {'ratio':>6}")
        for host in ("127.0.0.1", "localhost"):
            for _ in range(20):  # warm-up: imports, TLS context, resolver caches
                await once(False, host)
                await once(True, host)
            plain: list[float] = []
            guarded: list[float] = []
            for index in range(samples):
                # Alternate which goes first so neither always runs on a warmer loop.
                order = (False, True) if index % 2 == 0 else (True, False)
                for is_guarded in order:
                    (guarded if is_guarded else plain).append(await once(is_guarded, host))
            p, g = statistics.median(plain) * 1000, statistics.median(guarded) * 1000
            print(f"{host:<12} {p:>9.3f} {g:>11.3f} {g / p:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.pop("SSRF_ALLOWLIST", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
    import django

    django.setup()
    asyncio.run(run(args.samples))


if __name__ == "__main__":
    main()
