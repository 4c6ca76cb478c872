"""A throwaway provider (an aiohttp app) for one chat request through the gateway, in process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from routing import upstream
from tests.fuzz import Answer, asgi_request, assert_api_answer


def chat_through(
    app: web.Application,
    port: int,
    *,
    secret: str,
    model: str,
    stream: bool,
    after: Callable[[], Awaitable[object]] | None = None,
) -> Answer:
    """Serve ``app`` on ``port``, send one chat completion for ``model`` to the gateway, check its shape."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}

    async def run() -> Answer:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await asgi_request(
                "POST",
                "/v1/chat/completions",
                headers=[(b"authorization", f"Bearer {secret}".encode())],
                body=json.dumps(body).encode(),
            )
        finally:
            await upstream._session().close()
            await runner.cleanup()
            if after is not None:
                await after()  # on this short-lived loop, before it closes

    answer = asyncio.run(run())
    assert_api_answer(answer)
    return answer
