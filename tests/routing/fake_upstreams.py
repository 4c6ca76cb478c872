"""Telling the fake upstreams how to answer from now on, and asking how many requests they saw."""

from __future__ import annotations

import httpx

from tests import live


def behave(upstream: live.Server, **behaviour: object) -> None:
    """Change how a fake upstream answers every request from now on (no arguments: normal again)."""
    base = upstream.url.removesuffix("/v1")
    httpx.post(f"{base}/fake/behaviour", json=behaviour, timeout=5).raise_for_status()


def requests_seen(upstream: live.Server) -> int:
    return httpx.get(upstream.url.removesuffix("/v1") + "/healthz", timeout=5).json()["requests"]
