"""A fake OpenAI-compatible provider for the demo, the tests and the benchmark (no internet needed).

It answers ``/v1/chat/completions`` (plain and streamed), ``/v1/completions``,
``/v1/embeddings`` and ``/v1/models``. Defaults come from the command line; a request can
script its own behaviour with a directive anywhere in its last message::

    [[fake chunks=5 gap_ms=20 status=500 delay_ms=300 drop_after=2 no_usage=1]]

``status`` answers with that HTTP error, ``delay_ms`` waits before answering (or before the
first chunk), ``drop_after`` closes the connection after that many chunks, ``no_usage``
omits usage as some providers do, ``abort=1`` closes the connection without any answer,
``error=context_window`` or ``error=content_policy`` answers 400 the way OpenAI does for
those refusals, and ``first_byte_ms`` sends a stream's headers at once but waits that long
before its first event. ``echo_header=traceparent`` answers with the value of that request
header as the reply text (``-`` when absent), so a test can see what reached the provider.

A whole upstream can be told to misbehave too, for tests and the failover benchmark:
``POST /fake/behaviour`` with a JSON object of the same fields changes its defaults
(``{}`` restores the command-line ones), and the same fields can be given on the command
line. ``GET /healthz`` reports how many requests it has seen and how many content events it
has written into streams.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
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
    abort: bool = False
    error: str = ""
    first_byte_ms: float = 0.0
    reply: str = "Hello from the fake upstream."
    echo_header: str = ""


_INTS = ("chunks", "status", "drop_after")
_FLOATS = ("gap_ms", "delay_ms", "first_byte_ms")
_FLAGS = ("no_usage", "abort")


def _changes(pairs: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name, value in pairs.items():
        if name in _INTS:
            changes[name] = int(value)
        elif name in _FLOATS:
            changes[name] = float(value)
        elif name in _FLAGS:
            changes[name] = str(value).lower() not in ("0", "false", "")
        elif name in ("error", "echo_header"):
            changes[name] = str(value)
    return changes


def _behaviour(base: Behaviour, payload: dict[str, Any]) -> Behaviour:
    messages = payload.get("messages") or [{"content": payload.get("prompt") or payload.get("input") or ""}]
    last = messages[-1] if isinstance(messages, list) and messages else {}
    content = last.get("content", "") if isinstance(last, dict) else ""
    match = DIRECTIVE.search(content if isinstance(content, str) else json.dumps(content))
    if not match:
        return base
    pairs = dict(pair.partition("=")[::2] for pair in match.group(1).split())
    return replace(base, **_changes(pairs))


async def _misbehave(request: web.Request, behaviour: Behaviour) -> web.StreamResponse | None:
    """The scripted failure for this request, if any (after the scripted delay)."""
    if behaviour.delay_ms:
        await asyncio.sleep(behaviour.delay_ms / 1000)
    if behaviour.abort:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never sent: the connection is gone
    if behaviour.error == "context_window":
        return _error(
            400,
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "context_length_exceeded",
        )
    if behaviour.error == "content_policy":
        return _error(
            400,
            "Your request was rejected as a result of our safety system.",
            "content_policy_violation",
        )
    if behaviour.status != 200:
        return _error(behaviour.status, f"Scripted failure with status {behaviour.status}.", "scripted")
    return None


def _tokens(payload: dict[str, Any]) -> int:
    return max(1, len(json.dumps(payload.get("messages") or payload.get("prompt") or "")) // 4)


def _words(behaviour: Behaviour) -> list[str]:
    words = behaviour.reply.split(" ")
    return [(" " if i else "") + words[i % len(words)] for i in range(behaviour.chunks)]


class FakeUpstream:
    def __init__(self, behaviour: Behaviour, api_key: str = "") -> None:
        self.initial = self.behaviour = behaviour
        self.api_key = api_key
        self.requests = 0
        # Content events written into streams: a test can see whether a reader held a stream back.
        self.events_sent = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.health)
        app.router.add_post("/fake/behaviour", self.behaviour_set)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "requests": self.requests, "events_sent": self.events_sent})

    async def behaviour_set(self, request: web.Request) -> web.Response:
        try:
            pairs = json.loads(await request.read() or b"{}")
            self.behaviour = replace(self.initial, **_changes(pairs))
        except (ValueError, TypeError) as exc:
            return _error(400, f"Bad behaviour: {exc}", None)
        return web.json_response({"ok": True})

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

    async def _admitted(self, request: web.Request) -> tuple[dict[str, Any], Behaviour] | web.StreamResponse:
        """The request's body and how to answer it, or what to answer instead (a bad body, a refusal)."""
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        behaviour = _behaviour(self.behaviour, payload)
        refused = await _misbehave(request, behaviour)
        return refused if refused is not None else (payload, behaviour)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admitted(request)
        if not isinstance(admitted, tuple):
            return admitted
        payload, behaviour = admitted
        if behaviour.echo_header:
            behaviour = replace(behaviour, reply=request.headers.get(behaviour.echo_header, "-"))
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
            if behaviour.first_byte_ms:
                await asyncio.sleep(behaviour.first_byte_ms / 1000)
            if behaviour.drop_after == -2:  # headers sent, then the connection breaks before any event
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(chunk({"role": "assistant", "content": ""}, None))
            for index, word in enumerate(words):
                if behaviour.gap_ms:
                    await asyncio.sleep(behaviour.gap_ms / 1000)
                if index == behaviour.drop_after:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await response.write(chunk({"content": word}, None))
                self.events_sent += 1
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
        admitted = await self._admitted(request)
        if not isinstance(admitted, tuple):
            return admitted
        payload, behaviour = admitted
        words = _words(behaviour)
        prompt_tokens = _tokens(payload)
        completion_id = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = payload.get("model", "fake-model")
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }

        def body(text: str, finish: str | None, with_usage: bool) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
                if text or finish
                else [],
            }
            if with_usage:
                data["usage"] = usage
            return data

        if not payload.get("stream"):
            return web.json_response(body("".join(words), "stop", not behaviour.no_usage))
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage")) and not behaviour.no_usage
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if behaviour.first_byte_ms:
                await asyncio.sleep(behaviour.first_byte_ms / 1000)
            for index, word in enumerate(words):
                if behaviour.gap_ms:
                    await asyncio.sleep(behaviour.gap_ms / 1000)
                if index == behaviour.drop_after or behaviour.drop_after == -2:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await response.write(b"data: " + json.dumps(body(word, None, False)).encode() + b"\n\n")
                self.events_sent += 1
            await response.write(b"data: " + json.dumps(body("", "stop", False)).encode() + b"\n\n")
            if include_usage:
                await response.write(b"data: " + json.dumps(body("", None, True)).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admitted(request)
        if not isinstance(admitted, tuple):
            return admitted
        payload = admitted[0]
        inputs = payload.get("input", "")
        items = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
        dimensions = int(payload.get("dimensions") or 8)
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(json.dumps(item).encode()).digest()
            vector = [digest[k % len(digest)] / 255 for k in range(dimensions)]
            encoded: Any = vector
            if payload.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
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
