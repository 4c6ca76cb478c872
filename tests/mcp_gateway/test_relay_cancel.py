"""The relay's mailbox reader ends when cancelled, even when the channel layer swallows the cancellation."""

from __future__ import annotations

import asyncio

import redis

from mcp_gateway.relay import StreamRelay


class SwallowingLayer:
    """A layer whose receive turns a cancellation into a read timeout, as redis-py can."""

    def __init__(self) -> None:
        self.receives = 0
        self.swallow = True

    async def receive(self, channel: str) -> dict[str, str]:
        self.receives += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if not self.swallow:
                raise
            raise redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379") from None
        return {}


async def test_a_cancelled_relay_stops_instead_of_retrying_forever():
    layer = SwallowingLayer()
    task = asyncio.ensure_future(StreamRelay()._receive(layer, "mcp-relay.x"))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    try:
        assert done and task.cancelled() and layer.receives == 1
    finally:
        layer.swallow = False  # let a task that did not end go (otherwise the loop's close waits for it)
        task.cancel()
