"""A client that leaves mid-stream: the upstream call is dropped and usage is still recorded."""

from __future__ import annotations

import httpx

from tests.request_logs import wait_for_log


def stream_body(directive: str) -> bytes:
    return (
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "'
        + directive.encode()
        + b'"}]}'
    )


def test_client_disconnect_mid_stream_is_recorded_with_the_tokens_so_far(server, owner_key, deployment_factory):
    deployment_factory()
    headers = {"Authorization": f"Bearer {owner_key.secret}"}
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            content=stream_body("[[fake chunks=200 gap_ms=20]]"),
            headers=headers,
        ) as response:
            request_id = response.headers["x-request-id"]
            seen = 0
            for line in response.iter_lines():
                if '"content"' in line:
                    seen += 1
                if seen == 3:
                    break
    # Leaving the with-blocks closed the connection while ~197 chunks were still to come.
    log = wait_for_log(request_id=request_id)
    assert log.client_disconnected and log.stream
    assert log.error_type == "client_disconnected"
    assert log.usage_estimated and 3 <= log.completion_tokens < 200
    assert log.cut_after_bytes is not None and log.cut_after_bytes > 0
    assert log.latency_ms < 3000, "the stream must stop when the client leaves, not run to its end"


def test_a_stream_read_to_the_end_is_not_marked_disconnected(server, owner_key, deployment_factory):
    deployment_factory()
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=stream_body("[[fake chunks=5]]"),
        headers={"Authorization": f"Bearer {owner_key.secret}"},
        timeout=30,
    )
    assert response.text.endswith("data: [DONE]\n\n")
    log = wait_for_log(request_id=response.headers["x-request-id"])
    assert not log.client_disconnected and log.status_code == 200 and log.completion_tokens == 5
    assert log.cut_after_bytes is None
