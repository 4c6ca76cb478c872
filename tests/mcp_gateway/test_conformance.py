"""Opt-in (MCP_CONFORMANCE=1): the official conformance suite's server scenarios against a live gateway.

The suite cannot send an API key, so it talks to a small local proxy that adds one. It
needs Node 20 and fetches the suite with npx. Scenarios that need tools, prompts or
resources of the suite's own reference server fail by design; see docs/mcp.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.mcp_gateway.servers import DemoWorld

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.environ.get("MCP_CONFORMANCE") != "1", reason="set MCP_CONFORMANCE=1 (needs npx, Node 20)"),
]
SUITE = "@modelcontextprotocol/conformance@0.1.13"
# What passes today; the run prints every scenario's outcome.
EXPECTED_PASSING = {
    "server-initialize",
    "ping",
    "logging-set-level",
    "tools-list",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
}
HOP_HEADERS = {"content-length", "connection", "transfer-encoding", "keep-alive", "accept-encoding"}


@contextmanager
def key_adding_proxy(target: str, secret: str) -> Iterator[str]:
    """Forward every request to ``target`` with ``Authorization: Bearer <secret>``, streaming the answer."""
    client = httpx.Client(timeout=httpx.Timeout(30, read=None))

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            # Host goes through as sent: the suite's DNS-rebinding scenario is about it.
            headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_HEADERS}
            headers["Authorization"] = f"Bearer {secret}"
            with client.stream(self.command, f"{target}{self.path}", content=body, headers=headers) as response:
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in HOP_HEADERS | {"host", "content-encoding"}:
                        self.send_header(name, value)
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for chunk in response.iter_raw():
                    self.wfile.write(chunk)
                    self.wfile.flush()

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        client.close()


def test_conformance_suite_server_scenarios(demo_world: DemoWorld, session_tmp: Path) -> None:
    demo_world.grant()
    gateway, owner_key = demo_world.gateway, demo_world.key
    output = session_tmp / "conformance"
    with key_adding_proxy(gateway.url, owner_key.secret) as proxy:
        run = subprocess.run(
            ["npx", "-y", SUITE, "server", "--url", f"{proxy}/mcp", "-o", str(output)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    print(run.stdout[-20000:], run.stderr[-5000:])
    outcomes = scenario_outcomes(output)
    print(json.dumps(outcomes, indent=1, sort_keys=True))
    passed = {name for name, ok in outcomes.items() if ok}
    assert EXPECTED_PASSING <= passed, sorted(passed)


def scenario_outcomes(output: Path) -> dict[str, bool]:
    """Scenario name -> passed, from the checks the suite writes per scenario."""
    outcomes: dict[str, bool] = {}
    for checks in output.rglob("checks.json"):
        results = json.loads(checks.read_text())
        # Directories are server-<scenario>-<timestamp>.
        scenario = checks.parent.name.removeprefix("server-").rsplit("-", 6)[0]
        outcomes[scenario] = all(result.get("status") in ("SUCCESS", "INFO") for result in results)
    return outcomes
