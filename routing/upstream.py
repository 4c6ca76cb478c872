"""Calls to model providers: a lean byte relay for OpenAI-compatible ones, litellm for the rest."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from django.conf import settings

from core import registry
from core.errors import PlatformError, UpstreamError
from observability import telemetry
from routing.provider_errors import (
    connection_error,
    litellm_error,
    provider_failure_log,
    provider_message_clean,
    upstream_status_error,
)
from routing.selectors import DeploymentTarget

# litellm_params that configure the connection or the gateway, never sent as request fields.
_CONNECTION_PARAMS = frozenset(
    {
        "passthrough",
        "timeout",
        "stream_timeout",
        "extra_headers",
        "input_cost_per_token",
        "output_cost_per_token",
        "api_version",
        "organization",
        "rpm",
        "tpm",
        "weight",
        "order",
    }
)


CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
EMBEDDINGS_PATH = "/embeddings"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        """The provider's usage, or None when it sent none or counts that are not numbers."""
        if not isinstance(data, dict):
            return None
        try:
            prompt = _token_count(data.get("prompt_tokens"))
            completion = _token_count(data.get("completion_tokens"))
            total = _token_count(data.get("total_tokens")) or prompt + completion
        except (TypeError, ValueError, OverflowError):
            return None
        return cls(prompt, completion, total)


# More than any request can use; a larger count is a provider's bug, not usage to bill.
MAX_TOKEN_COUNT = 1_000_000_000


def _token_count(value: Any) -> int:
    """A count from a provider's JSON: a non-negative whole number (12.0 is 12) or nothing."""
    if value is None or isinstance(value, bool):
        return 0
    count = int(value)  # a string such as "many" or a list raises: the caller drops the usage
    if count != value or not 0 <= count <= MAX_TOKEN_COUNT:
        raise ValueError(f"not a token count: {value!r}")
    return count


def completion_output(body: bytes) -> list[Any]:
    """What a completion answered, choice by choice: chat messages or completion texts (for traces)."""
    try:
        choices = json.loads(body).get("choices")
    except (ValueError, AttributeError):
        return []
    if not isinstance(choices, list):
        return []
    return [choice.get("message", choice.get("text")) if isinstance(choice, dict) else None for choice in choices]


# One connection pool per event loop: a session is bound to the loop it was made on.
_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def _sessions_of_ended_loops_forget() -> None:
    """Drop the pools of loops that have ended; a running loop's pool stays (forgotten, it would leak open)."""
    for loop in [loop for loop in _sessions if loop.is_closed()]:
        del _sessions[loop]


registry.register("routing.upstream.sessions", reset=_sessions_of_ended_loops_forget)


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        _sessions[loop] = session
    return session


def _timeout(target: DeploymentTarget, *, stream: bool) -> aiohttp.ClientTimeout:
    total = float(target.extra_params.get("timeout") or settings.UPSTREAM_TIMEOUT)
    if stream:
        # A stream may legitimately run long; bound the wait for each next chunk instead.
        read = float(target.extra_params.get("stream_timeout") or total)
        return aiohttp.ClientTimeout(total=None, connect=settings.UPSTREAM_CONNECT_TIMEOUT, sock_read=read)
    return aiohttp.ClientTimeout(total=total, connect=settings.UPSTREAM_CONNECT_TIMEOUT)


def _headers(target: DeploymentTarget) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    extra = target.extra_params.get("extra_headers")
    if isinstance(extra, dict):
        headers.update({str(k): str(v) for k, v in extra.items()})
    telemetry.inject(headers)  # the provider call continues the trace, as a child of the model-call span
    return headers


def upstream_payload(target: DeploymentTarget, payload: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    body = dict(payload)
    body["model"] = target.upstream_model
    if stream:
        # Always ask for usage so accounting is exact; the usage chunk is dropped again
        # for clients that did not ask for it.
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return body


@dataclass(slots=True)
class Completion:
    body: bytes
    usage: Usage | None
    wait_s: float


async def complete(target: DeploymentTarget, payload: dict[str, Any], path: str = CHAT_PATH) -> Completion:
    if not target.passthrough:
        return await _litellm_complete(target, payload, path)
    data = json.dumps(upstream_payload(target, payload, stream=False)).encode()
    started = time.perf_counter()
    try:
        async with _session().post(
            f"{target.api_base}{path}",
            data=data,
            headers=_headers(target),
            timeout=_timeout(target, stream=False),
        ) as response:
            body = await response.read()
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise connection_error(target, exc) from exc
    wait = time.perf_counter() - started
    if status != 200:
        raise upstream_status_error(target, status, body, retry_after)
    try:
        usage = Usage.from_dict(json.loads(body).get("usage"))
    except (ValueError, AttributeError) as exc:
        raise UpstreamError(f"The provider for model '{target.model_name}' sent a response that is not JSON.") from exc
    return Completion(body, usage, wait)


class StreamRelay:
    """Relays an upstream SSE stream event by event, measuring time spent waiting on it.

    ``open`` raises the client-facing error if the upstream fails before its first byte.
    ``events`` yields ready-to-send ``data: ...\\n\\n`` blocks (without ``[DONE]``); a
    failure after the first byte ends the stream with an SSE error event instead.
    """

    def __init__(
        self, target: DeploymentTarget, payload: dict[str, Any], *, client_wants_usage: bool, path: str = CHAT_PATH
    ) -> None:
        self.target = target
        self.path = path
        self.payload = payload
        self.client_wants_usage = client_wants_usage
        self.usage: Usage | None = None
        self.wait_s = 0.0
        self.content_events = 0
        # The streamed text, kept only when the tenant lets completions into its traces.
        self.collected: list[str] | None = None
        self.error: PlatformError | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._litellm_stream: Any = None

    async def open(self) -> None:
        started = time.perf_counter()
        try:
            if not self.target.passthrough:
                self._litellm_stream = await _litellm_call(self.target, self.payload, stream=True, path=self.path)
                return
            data = json.dumps(upstream_payload(self.target, self.payload, stream=True)).encode()
            try:
                response = await _session().post(
                    f"{self.target.api_base}{self.path}",
                    data=data,
                    headers=_headers(self.target),
                    timeout=_timeout(self.target, stream=True),
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise connection_error(self.target, exc) from exc
            if response.status != 200:
                try:
                    body = await response.read()
                finally:
                    response.release()
                raise upstream_status_error(self.target, response.status, body, response.headers.get("Retry-After"))
            self._response = response
        finally:
            self.wait_s += time.perf_counter() - started

    async def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _error_event(self, data: bytes) -> bytes:
        """An error event the provider sent inside its stream, with its message cleaned like any other."""
        try:
            event = json.loads(data)
            error = event["error"]
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                provider_failure_log(self.target, "stream error event", error["message"])
                error["message"] = provider_message_clean(self.target, error["message"])
                return json.dumps(event).encode()
        except (ValueError, KeyError, TypeError):
            pass
        return b'{"error": {"message": "The provider sent an error in its stream.", "type": "upstream_error"}}'

    def _keep(self, data: bytes) -> bool:
        """Note usage carried by an event; False for the usage-only event the client did not ask for."""
        if b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data:
            try:
                chunk = json.loads(data)
            except ValueError:
                return True
            if not isinstance(chunk, dict):
                return True
            usage = Usage.from_dict(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
                if not chunk.get("choices") and not self.client_wants_usage:
                    return False
        elif b'"content"' in data or b'"text"' in data:
            self.content_events += 1
            if self.collected is not None:
                self._collect(data)
        return True

    def _collect(self, data: bytes) -> None:
        try:
            choices = json.loads(data).get("choices") or ()
        except (ValueError, AttributeError):
            return
        for choice in choices:
            if isinstance(choice, dict):
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str):
                    self.collected.append(text)  # type: ignore[union-attr]

    async def events(self) -> AsyncIterator[bytes]:
        source = self._litellm_events() if self._litellm_stream is not None else self._passthrough_events()
        iterator = source.__aiter__()
        while True:
            started = time.perf_counter()
            try:
                data = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except (TimeoutError, aiohttp.ClientError, PlatformError) as exc:
                self.error = exc if isinstance(exc, PlatformError) else connection_error(self.target, exc)
                self.error.message = f"The upstream stream broke off: {self.error.message}"
                yield b"data: " + self.error.body_bytes() + b"\n\n"
                return
            except Exception as exc:  # litellm's own exceptions, raised mid-stream by its iterator
                self.error = litellm_error(self.target, exc)
                self.error.message = f"The upstream stream broke off: {self.error.message}"
                yield b"data: " + self.error.body_bytes() + b"\n\n"
                return
            finally:
                self.wait_s += time.perf_counter() - started
            if data.startswith(b'{"error"'):
                data = self._error_event(data)
            if self._keep(data):
                yield b"data: " + data + b"\n\n"

    async def _passthrough_events(self) -> AsyncIterator[bytes]:
        assert self._response is not None
        buffer = b""
        done = False
        async for piece in self._response.content.iter_any():
            buffer += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    yield data
                if done:
                    return
        if not done:
            raise aiohttp.ClientPayloadError("stream ended without [DONE]")

    async def _litellm_events(self) -> AsyncIterator[bytes]:
        async for chunk in self._litellm_stream:
            yield chunk.model_dump_json(exclude_none=False).encode()


litellm_module: registry.Singleton[Any] = registry.Singleton(
    "routing.litellm", lambda: importlib.import_module("litellm")
)


async def _litellm() -> Any:
    module = litellm_module.peek()
    if module is None:
        # Importing litellm takes seconds; do it off the event loop, once.
        module = await asyncio.to_thread(litellm_module)
    return module


async def _litellm_call(target: DeploymentTarget, payload: dict[str, Any], *, stream: bool, path: str) -> Any:
    litellm = await _litellm()
    kwargs = {key: value for key, value in target.extra_params.items() if key not in _CONNECTION_PARAMS}
    kwargs.update({key: value for key, value in payload.items() if key != "model"})
    kwargs.update(model=target.litellm_model, num_retries=0)
    if path != EMBEDDINGS_PATH:
        kwargs["stream"] = stream
    if target.api_base:
        kwargs["api_base"] = target.api_base
    if target.api_key:
        kwargs["api_key"] = target.api_key
    for key in ("api_version", "organization"):
        if key in target.extra_params:
            kwargs[key] = target.extra_params[key]
    extra = target.extra_params.get("extra_headers")
    headers = {str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else {}
    telemetry.inject(headers)  # litellm sends extra_headers with the provider request: the trace continues there
    if headers:
        kwargs["extra_headers"] = headers
    kwargs["timeout"] = float(target.extra_params.get("timeout") or settings.UPSTREAM_TIMEOUT)
    if stream:
        kwargs["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    call = {EMBEDDINGS_PATH: litellm.aembedding, COMPLETIONS_PATH: litellm.atext_completion}.get(
        path, litellm.acompletion
    )
    try:
        return await call(**kwargs)
    except Exception as exc:
        raise litellm_error(target, exc) from exc


async def _litellm_complete(target: DeploymentTarget, payload: dict[str, Any], path: str) -> Completion:
    started = time.perf_counter()
    response = await _litellm_call(target, payload, stream=False, path=path)
    wait = time.perf_counter() - started
    data = response.model_dump()
    return Completion(json.dumps(data).encode(), Usage.from_dict(data.get("usage")), wait)
