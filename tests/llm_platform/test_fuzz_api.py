"""A bounded fuzzing run over every /v1/ endpoint: no 500, no HTML or empty error, no hang.

Hypothesis drives the real ASGI application in process (Channels consumers and the ninja
API behind the same router daphne serves) with generated methods, headers, query strings
and bodies: random JSON of any shape and depth, valid requests with one field mutated,
huge numbers, NaN and Infinity, NUL and lone surrogates, bytes that are not UTF-8. Most
requests carry a valid key so validation is reached; those that pass it go to the fake
upstream. Derandomized, so CI runs the same examples every time; bounded in examples and
in time per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing import upstream
from tenants import services
from tenants.models import Quota
from tests.fuzz import asgi_request, assert_api_answer

pytestmark = pytest.mark.django_db(transaction=True)

# One request may take this long at most (a streamed answer from the fake upstream takes
# milliseconds; validation microseconds): more is a hang.
REQUEST_SECONDS = 8.0
EXAMPLES = 800

CHAT = ("POST", "/v1/chat/completions")
COMPLETIONS = ("POST", "/v1/completions")
EMBEDDINGS = ("POST", "/v1/embeddings")
MODELS = ("GET", "/v1/models")
FEEDBACK = ("POST", "/v1/feedback")
AUDIT = ("GET", "/v1/audit/events")
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, MODELS, FEEDBACK, AUDIT)
UNKNOWN_PATHS = ("/v1/", "/v1/nothing", "/v1/chat/completions/x", "/v1/models/gpt-4o-mini", "/v1/audit", "/v1/%00")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")

VALID: dict[tuple[str, str], dict[str, Any]] = {
    CHAT: {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "temperature": 0.5,
        "stream": False,
    },
    COMPLETIONS: {"model": "gpt-4o-mini", "prompt": "hello", "max_tokens": 5, "n": 1},
    EMBEDDINGS: {"model": "embedder", "input": ["hello", "world"]},
    FEEDBACK: {"request_id": "req_0123456789abcdef01234567", "score": 0.5, "comment": "ok"},
}
# Parameters worth mutating beyond the template's own keys (each endpoint reads some of them).
EXTRA_PARAMS = (
    "n",
    "best_of",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "top_p",
    "dimensions",
    "encoding_format",
    "tools",
    "user",
    "stop",
)

# JSON scalars a hostile client sends: huge and odd numbers, NUL, lone surrogates, nothing.
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "gpt\x00", "\ud800", "a\udfffb", "user", "assistant", "\u202e", "😀" * 5]),
)
json_values = st.recursive(
    hostile_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def encode(document: Any) -> bytes:
    """JSON as a client library would send it, NaN and Infinity literals and surrogate escapes included."""
    return json.dumps(document, allow_nan=True).encode()


@st.composite
def mutated(draw: st.DrawFn, endpoint: tuple[str, str]) -> bytes:
    """A valid body for ``endpoint`` with one field (top level or nested) replaced or removed."""
    body = json.loads(json.dumps(VALID[endpoint]))
    where = draw(st.sampled_from(["top", "top", "message", "nested_option"]))
    value = draw(json_values)
    if where == "message" and "messages" in body:
        message = body["messages"][draw(st.integers(0, len(body["messages"]) - 1))]
        message[draw(st.sampled_from(["role", "content", "name", "tool_calls"]))] = value
    elif where == "nested_option" and endpoint == CHAT:
        body["stream"] = True
        body["stream_options"] = {"include_usage": value}
    else:
        name = draw(st.sampled_from(sorted(body) + list(EXTRA_PARAMS)))
        if draw(st.booleans()) or name not in body:
            body[name] = value
        else:
            del body[name]
    return encode(body)


def deep(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    if opener == b"{":
        return b'{"a":' * depth + b"1" + closer * depth
    return opener * depth + closer * depth


@st.composite
def bodies(draw: st.DrawFn, endpoint: tuple[str, str] | None) -> bytes:
    kind = draw(st.sampled_from(["valid"] * 3 + ["mutated"] * 4 + ["json", "deep", "bytes", "text", "empty"]))
    if kind in ("valid", "mutated") and endpoint in VALID:
        if kind == "valid":
            body = dict(VALID[endpoint])
            if endpoint in (CHAT, COMPLETIONS) and draw(st.booleans()):
                body["stream"] = True
            if endpoint == CHAT and draw(st.integers(0, 5)) == 0:
                # Now and then a scripted provider failure, so error relaying is exercised too.
                directive = draw(
                    st.sampled_from(
                        ["status=500", "status=429", "status=400", "error=context_window", "drop_after=1", "no_usage=1"]
                    )
                )
                body["messages"] = [{"role": "user", "content": f"hi [[fake {directive} chunks=3]]"}]
            return encode(body)
        return draw(mutated(endpoint))
    if kind == "json" or kind in ("valid", "mutated"):
        return encode(draw(json_values))
    if kind == "deep":
        return deep(draw(st.sampled_from([127, 129, 1000, 50_000])), draw(st.sampled_from([b"[", b"{"])))
    if kind == "bytes":
        return draw(st.binary(max_size=200)) + draw(st.sampled_from([b"", b"\xff\xfe", b'{"model": "\xc3\x28"}']))
    if kind == "text":
        return draw(
            st.sampled_from([b"NaN", b"Infinity", b'{"model": NaN}', b"{", b"null", b"[]", b"1e999999", b'"x"'])
        )
    return b""


@st.composite
def query_strings(draw: st.DrawFn, endpoint: tuple[str, str] | None) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=40))  # raw, as a broken client might send it
    names = ["since", "until", "actor", "action", "outcome", "cursor", "limit"] if endpoint == AUDIT else ["x"]
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(names), st.text(max_size=8)))
        value = draw(
            st.one_of(
                st.text(max_size=30),
                st.sampled_from(
                    [
                        "0001-01-01T00:00:00+14:00",
                        "9999-12-31T23:59:59-14:00",
                        "2026-01-01T00:00:00",
                        "2026-13-45T99:99:99Z",
                        "2026-01-01T00:00:00Z",
                        "\x00",
                        "success",
                        "-1",
                        "1001",
                        "99999999999999999999999",
                        "eyJhZnRlciI6IC0xfQ",
                    ]
                ),
                st.integers().map(str),
            )
        )
        pairs.append(
            quote_from_bytes(name.encode("utf-8", "surrogatepass"))
            + "="
            + quote_from_bytes(value.encode("utf-8", "surrogatepass"))
        )
    return "&".join(pairs).encode()


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 7)) == 0:
        endpoint = None
        method, path = draw(st.sampled_from(METHODS)), draw(st.sampled_from(UNKNOWN_PATHS))
    else:
        endpoint = draw(st.sampled_from(ENDPOINTS))
        method, path = endpoint
        if draw(st.integers(0, 9)) == 0:
            method = draw(st.sampled_from(METHODS))
    credential = draw(
        st.sampled_from(["valid"] * 12 + ["quota"] * 4 + ["none", "duplicate", "oversized", "garbage", "scheme", "nul"])
    )
    content_type = draw(
        st.sampled_from(
            [
                b"application/json",
                b"application/json",
                None,
                b"text/plain",
                b"multipart/form-data; boundary=zz",
                b"application/x-www-form-urlencoded",
                b"\xff\x00garbage",
            ]
        )
    )
    return {
        "endpoint": endpoint,
        "method": method,
        "path": path,
        "credential": credential,
        "content_type": content_type,
        "query": draw(query_strings(endpoint)),
        "body": draw(bodies(endpoint)),
        "garbage": draw(st.binary(min_size=1, max_size=60)),
        "noise": draw(
            st.lists(
                st.sampled_from(
                    [
                        (b"traceparent", b"00-zz-\x00-01"),
                        (b"traceparent", b"00-" + b"f" * 4000),
                        (b"content-type", b"application/json"),
                        (b"content-type", b"text/html"),
                        (b"x-forwarded-for", b"\xff, 999.1.1.1, ::::"),
                        (b"accept", b"text/html"),
                        (b"content-length", b"0"),
                        (b"content-length", b"18446744073709551616"),
                        (b"transfer-encoding", b"chunked"),
                        (b"cookie", b"csrftoken=\x00; sessionid=" + b"a" * 300),
                    ]
                ),
                max_size=3,
            )
        ),
    }


def authorization(case: dict[str, Any], keys: dict[str, str]) -> list[tuple[bytes, bytes]]:
    secret = keys["audit"] if case["endpoint"] == AUDIT else keys["valid"]
    return {
        "valid": [(b"authorization", f"Bearer {secret}".encode())],
        "quota": [(b"authorization", f"Bearer {keys['quota']}".encode())],
        "none": [],
        "duplicate": [
            (b"authorization", f"Bearer {secret}".encode()),
            (b"authorization", f"Bearer {keys['quota']}".encode()),
        ],
        "oversized": [(b"authorization", b"Bearer sk-" + b"x" * 5000)],
        "garbage": [(b"authorization", case["garbage"])],
        "scheme": [(b"authorization", b"Basic " + case["garbage"])],
        "nul": [(b"authorization", f"Bearer {secret[:10]}\x00{secret[10:]}".encode())],
    }[case["credential"]]


@pytest.fixture
def fuzz_world(owner, key_factory, deployment_factory) -> dict[str, str]:
    deployment_factory()
    deployment_factory("embedder", "openai/text-embedding-3-small")
    quota_key = key_factory(owner, "fuzz quota")
    services.quota_save(quota=Quota(api_key=quota_key.key, tpm_limit=2_000_000, rpm_limit=100_000), actor="test")
    return {
        "valid": key_factory(owner, "fuzz").secret,
        "quota": quota_key.secret,
        "audit": key_factory(owner, "fuzz audit", scopes=["audit"]).secret,
    }


def test_no_request_to_v1_gets_a_500_a_non_json_error_or_hangs(fuzz_world):
    loop = asyncio.new_event_loop()
    seen: Counter[tuple[str, int]] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # timed below, per request, with a bound that holds on a loaded CI machine
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=requests())
    def check(case: dict[str, Any]) -> None:
        headers = authorization(case, fuzz_world)
        if case["content_type"] is not None:
            headers.append((b"content-type", case["content_type"]))
        headers.extend(case["noise"])
        started = time.perf_counter()
        answer = loop.run_until_complete(
            asgi_request(
                case["method"],
                case["path"],
                headers=headers,
                body=case["body"],
                query=case["query"],
                seconds=REQUEST_SECONDS,
            )
        )
        elapsed = time.perf_counter() - started
        assert elapsed < REQUEST_SECONDS, (case, elapsed)
        assert_api_answer(answer)
        seen[(case["path"] if case["endpoint"] else "unknown", answer.status)] += 1

    try:
        check()
    finally:
        session = upstream._sessions.pop(loop, None)
        if session is not None:
            loop.run_until_complete(session.close())
        loop.close()
    # The run reached validation and the upstream on every model endpoint, not only the key check.
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/feedback", "/v1/audit/events"):
        assert seen[(path, 400)] >= 5, (path, sorted(seen.items()))
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/audit/events"):
        assert seen[(path, 200)] >= 3, (path, sorted(seen.items()))
