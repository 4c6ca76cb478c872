"""A fake OpenAI-compatible provider for the demo, the tests and the benchmark (no internet needed).

It answers ``/v1/chat/completions`` (plain and streamed), ``/v1/completions``,
``/v1/embeddings`` and ``/v1/models``. Defaults come from the command line; a request can
script its own behaviour with a directive anywhere in its last message::

    [[fake chunks=5 gap_ms=20 status=500 delay_ms=300 drop_after=2 no_usage=1]]

``status`` answers with that HTTP error, ``delay_ms`` waits before answering (or before the
first chunk), ``drop_after`` closes the connection after that many chunks, ``no_usage``
omits usage as some providers do.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

DIRECTIVE = re.compile(r"\[\[fake ([^\]]*)\]\]")


@dataclass(frozen=True)
class Behaviour:
    chunks: int = 8
    gap_ms: float = 0.0
    status: int = 200
    delay_ms: float = 0.0
    drop_after: int = -1
    no_usage: bool = False
    reply: str = "Hello from the fake upstream."


def _behaviour(base: Behaviour, payload: dict[str, Any]) -> Behaviour:
    messages = payload.get("messages") or [{"content": payload.get("prompt", "")}]
    last = messages[-1] if isinstance(messages, list) and messages else {}
    content = last.get("content", "") if isinstance(last, dict) else ""
    match = DIRECTIVE.search(content if isinstance(content, str) else json.dumps(content))
    if not match:
        return base
    changes: dict[str, Any] = {}
    for pair in match.group(1).split():
        name, _, value = pair.partition("=")
        if name in ("chunks", "status", "drop_after"):
            changes[name] = int(value)
        elif name in ("gap_ms", "delay_ms"):
            changes[name] = float(value)
        elif name == "no_usage":
            changes[name] = value not in ("0", "false", "")
    return replace(base, **changes)


def _tokens(payload: dict[str, Any]) -> int:
    return max(1, len(json.dumps(payload.get("messages") or payload.get("prompt") or "")) // 4)


def _words(behaviour: Behaviour) -> list[str]:
    words = behaviour.reply.split(" ")
    return [(" " if i else "") + words[i % len(words)] for i in range(behaviour.chunks)]


class FakeUpstream:
    def __init__(self, behaviour: Behaviour, api_key: str = "") -> None:
        self.behaviour = behaviour
        self.api_key = api_key
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "requests": self.requests})

    def _refuse(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        return None

    async def _payload(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.requests += 1
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", None)
        if not isinstance(payload, dict):
            return _error(400, "The request body must be a JSON object.", None)
        return payload

    async def chat(self, request: web.Request) -> web.StreamResponse:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        behaviour = _behaviour(self.behaviour, payload)
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)
        if behaviour.status != 200:
            return _error(behaviour.status, f"Scripted failure with status {behaviour.status}.", "scripted")
        model = payload.get("model", "fake-model")
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        prompt_tokens = _tokens(payload)
        words = _words(behaviour)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if not payload.get("stream"):
            body = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
                ],
            }
            if not behaviour.no_usage:
                body["usage"] = usage
            return web.json_response(body)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage")) and not behaviour.no_usage
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            await response.write(chunk({"role": "assistant", "content": ""}, None))
            for index, word in enumerate(words):
                if behaviour.gap_ms:
                    await asyncio.sleep(behaviour.gap_ms / 1000)
                if index == behaviour.drop_after:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await response.write(chunk({"content": word}, None))
            await response.write(chunk({}, "stop"))
            if include_usage:
                final = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-stream, as clients do
        return response

    async def completions(self, request: web.Request) -> web.StreamResponse:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        behaviour = _behaviour(self.behaviour, payload)
        if behaviour.status != 200:
            return _error(behaviour.status, f"Scripted failure with status {behaviour.status}.", "scripted")
        words = _words(behaviour)
        prompt_tokens = _tokens(payload)
        return web.json_response(
            {
                "id": "cmpl-" + uuid.uuid4().hex[:24],
                "object": "text_completion",
                "created": int(time.time()),
                "model": payload.get("model", "fake-model"),
                "choices": [{"index": 0, "text": "".join(words), "finish_reason": "stop", "logprobs": None}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_tokens + len(words),
                },
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        inputs = payload.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        dimensions = int(payload.get("dimensions") or 8)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [((hash(str(item)) >> k) % 1000) / 1000 for k in range(dimensions)],
            }
            for i, item in enumerate(items)
        ]
        tokens = max(1, len(json.dumps(items)) // 4)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": payload.get("model", "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]}
        )


def _error(status: int, message: str, code: str | None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}}, status=status)


def fake_upstream_run(host: str, port: int, behaviour: Behaviour, api_key: str = "") -> None:
    web.run_app(FakeUpstream(behaviour, api_key).app(), host=host, port=port, print=None, access_log=None)
