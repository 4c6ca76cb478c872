"""Requests to the whole ASGI application in process, and what every /v1/ answer must look like."""

from __future__ import annotations

import asyncio

from asgiref.testing import ApplicationCommunicator

from tests.asgi import Answer, http_scope

ERROR_FIELDS = {"message", "type", "code", "param"}


async def asgi_request(
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    query: bytes = b"",
    seconds: float = 10,
) -> Answer:
    """One request to ``llm_platform.asgi.application``, answered in full within ``seconds`` each step."""
    from llm_platform.asgi import application

    scope = http_scope(method, path, headers or [])
    scope["query_string"] = query
    communicator = ApplicationCommunicator(application, scope)
    try:
        await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await communicator.receive_output(seconds)
        assert start["type"] == "http.response.start", start
        chunks = []
        while True:
            message = await communicator.receive_output(seconds)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(seconds)
    finally:
        if not communicator.future.done():
            communicator.future.cancel()
            try:
                await communicator.future
            except (asyncio.CancelledError, Exception):
                pass
    headers = {bytes(name).lower(): bytes(value) for name, value in start.get("headers", [])}
    return Answer(int(start["status"]), headers, b"".join(chunks))


def assert_api_answer(answer: Answer) -> None:
    """The /v1/ contract: never a 500, and every failure an OpenAI-style JSON error."""
    assert answer.status != 500, answer.body[:500]
    if answer.status < 400:
        return
    content_type = answer.headers.get(b"content-type", b"").split(b";")[0].strip()
    assert content_type == b"application/json", (answer.status, answer.headers, answer.body[:300])
    body = answer.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_FIELDS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["type"], str), body
