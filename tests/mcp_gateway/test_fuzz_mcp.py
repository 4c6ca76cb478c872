"""A bounded fuzzer of the MCP endpoints, in process: generated JSON-RPC messages, batches, headers and methods.

Each example is one request to the gateway's ASGI application (``llm_platform.asgi``) with
a real upstream MCP server behind it. Whatever the input, the answer must come within a
few seconds, never be a 5xx, and be a JSON-RPC response (or a batch of them), an SSE stream
of JSON-RPC messages, or an empty 200/202 where the spec has one. Derandomized, so a CI
run explores the same inputs every time; about a minute in all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from audit.services import deferred_audit
from mcp_gateway import services
from mcp_gateway.models import UpstreamServer, UpstreamTool, VirtualServer
from mcp_gateway.upstream import pool
from tenants.models import Tenant
from tests.asgi import http_scope
from tests.keys import Issued
from tests.mcp_gateway.inprocess import META, LegacyStream, application, auth_headers, request, rpc

pytestmark = pytest.mark.django_db(transaction=True)

# How long one request may take before it counts as hanging (the upstream answers in milliseconds).
ANSWER_WITHIN = 5.0
MAX_PIECES = 2000
# An SSE answer quiet for this long is a stream meant to stay open: the client then leaves.
STREAM_QUIET = 0.2

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # a slow example is caught by ANSWER_WITHIN, with the request that was slow
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = [
    "initialize",
    "ping",
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
]
VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]
NAMES = ["demo.echo", "demo.add", "demo.fail", "demo.delete_everything", "demo.greet", "demo.nothing", "nowhere.x"]
URIS = ["memo://readme", "memo://nothing", "file:///etc/passwd", ""]


# --- the world the requests meet -----------------------------------------------------------------


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    secret: str
    sessions: dict[tuple[str, str], str]  # (endpoint, protocol version) -> a live session of the owner's key
    legacy: LegacyStream
    requests: int = 0
    # SSE ids the gateway sent, by the session they were sent in: real streams to resume.
    event_ids: dict[tuple[str, str] | None, list[str]] = field(default_factory=dict)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def session_renew(self, endpoint: str, version: str) -> None:
        self.sessions[(endpoint, version)] = await session_create(self.secret, endpoint, version)


async def session_create(secret: str, endpoint: str, version: str) -> str:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}
    answer = await request("POST", endpoint, auth_headers(secret), rpc("initialize", params))
    return answer.headers[b"mcp-session-id"].decode()


@pytest.fixture
def world(demo: UpstreamServer, grant: Callable[..., Any], owner: Tenant, owner_key: Issued) -> Iterator[World]:
    for tool in ("echo", "add", "fail"):
        grant(owner, demo, tool)
    services.virtual_server_save(
        bundle=VirtualServer(name="safe"), tools=list(UpstreamTool.objects.filter(name="echo")), actor="test"
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def setup() -> tuple[dict[tuple[str, str], str], LegacyStream]:
        sessions = {}
        for path in ("/mcp", "/mcp/safe"):
            for version in VERSIONS[1:4]:
                sessions[(path, version)] = await session_create(owner_key.secret, path, version)
        return sessions, await LegacyStream(owner_key.secret).open()

    sessions, legacy = loop.run_until_complete(setup())
    world = World(loop, owner_key.secret, sessions, legacy)
    try:
        yield world
    finally:

        async def teardown() -> list[dict[str, Any]]:
            replies = []
            while not await legacy.communicator.receive_nothing(0.05):
                message = await legacy.communicator.receive_output(1)
                legacy.buffer += message.get("body", b"")
            for frame in legacy.buffer.split(b"\n\n"):
                for line in frame.decode().splitlines():
                    if line.startswith("data: "):
                        replies.append(json.loads(line[6:]))
            await legacy.close()
            await pool.close_all()
            await deferred_audit.flush()
            return replies

        try:
            # Every reply the legacy session's stream carried is a JSON-RPC message too.
            for reply in loop.run_until_complete(teardown()):
                _message_check(reply)
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            asyncio.set_event_loop(None)
            loop.close()


# --- what every answer must be -------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    query: bytes = b""
    # Resolved when the request is sent, against what the gateway sent before: (which id, how to forge it),
    # and the (endpoint, version) of the live session to send.
    resume: tuple[int, str] | None = None
    session: tuple[str, str] | None = None
    chunk: int = 0  # > 0: the body arrives in pieces of this size
    overrides: tuple[tuple[str, Any], ...] = ()  # settings in force for this request

    def __repr__(self) -> str:  # a failure report shows the request, not all of a 200 KB body
        body = self.body if len(self.body) <= 400 else self.body[:400] + b"... (%d bytes)" % len(self.body)
        return (
            f"Exchange({self.method} {self.path}?{self.query!r} headers={self.headers!r} body={body!r} "
            f"resume={self.resume} chunk={self.chunk} overrides={self.overrides})"
        )


def _message_check(message: Any) -> None:
    """A JSON-RPC response (result xor error object) or a notification from the server."""
    assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", message
    if "method" in message:
        assert isinstance(message["method"], str) and "id" not in message, message
        return
    assert "id" in message and (("result" in message) != ("error" in message)), message
    if "error" in message:
        error = message["error"]
        assert isinstance(error, dict) and isinstance(error.get("code"), int), message
        assert isinstance(error.get("message"), str) and error["message"], message


FORGERIES: dict[str, Callable[[str], str]] = {
    "same": lambda ident: ident,
    "superscript": lambda ident: ident.rsplit("_", 1)[0] + "_\u00b2-0",
    "huge": lambda ident: ident.rsplit("_", 1)[0] + "_" + "9" * 40 + "-0",
    "no-position": lambda ident: ident.rsplit("_", 1)[0] + "_",
    "other-stream": lambda ident: "f" * 32 + "_" + ident.rsplit("_", 1)[1],
}


async def exchange(world: World, case: Exchange) -> None:
    known = world.event_ids.get(case.session) or [i for ids in world.event_ids.values() for i in ids]
    if case.resume is not None and known:
        index, forgery = case.resume
        ident = FORGERIES[forgery](known[index % len(known)])
        case = replace(case, headers=[*case.headers, (b"last-event-id", ident.encode("latin-1"))])
    if case.session is not None:
        case = replace(case, headers=[*case.headers, (b"mcp-session-id", world.sessions[case.session].encode())])
    scope = http_scope(case.method, case.path, case.headers, host="localhost")
    scope["query_string"] = case.query
    communicator = ApplicationCommunicator(application(), scope)
    # At most MAX_PIECES pieces: a 200 KB body in 1-byte pieces is 200,000 ASGI messages, which
    # measures the test harness against the answer deadline rather than the gateway.
    size = max(case.chunk, -(-len(case.body) // MAX_PIECES)) if case.chunk else 0
    pieces = [case.body[i : i + size] for i in range(0, len(case.body), size)] if size else []
    for index, piece in enumerate(pieces or [case.body]):
        await communicator.send_input({"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1})
    start = await communicator.receive_output(ANSWER_WITHIN)
    assert start["type"] == "http.response.start", start
    status = start["status"]
    assert status < 500, (status, case)
    headers = dict(start.get("headers", []))
    sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
    body, ended = b"", False
    deadline = time.monotonic() + ANSWER_WITHIN
    while not ended:
        if sse and await communicator.receive_nothing(STREAM_QUIET):
            break  # a stream that stays open (GET, listen): the client leaves
        message = await communicator.receive_output(max(deadline - time.monotonic(), 0.01))
        assert message["type"] == "http.response.body", (message, case)  # one response, never a second start
        body += message.get("body", b"")
        ended = not message.get("more_body", False)
    if not ended:
        await communicator.send_input({"type": "http.disconnect"})
        while not await communicator.receive_nothing(0.05):
            await communicator.receive_output(1)  # what the stream sent before it saw the client leave
    await communicator.wait(ANSWER_WITHIN)
    world.requests += 1
    if case.session is not None and case.method == "DELETE" and status == 200:
        await world.session_renew(*case.session)  # ended: the next requests get a live one again
    if sse:
        assert status == 200, (status, case)
        for frame in body.split(b"\n\n"):
            lines = frame.decode().splitlines()
            seen = world.event_ids.setdefault(case.session, [])
            seen += [line[4:] for line in lines if line.startswith("id: ")]
            del seen[:-20]
            if "event: endpoint" in lines:  # the legacy stream's first event: the URL to POST to
                continue
            for line in lines:
                if line.startswith("data: ") and line != "data: ":
                    _message_check(json.loads(line[6:]))
        return
    if not body:
        assert status in (200, 202), (status, case)
        return
    assert headers.get(b"content-type") == b"application/json", (headers, case)
    document = json.loads(body)
    for message in document if isinstance(document, list) else [document]:
        _message_check(message)
        if "error" in message and status == 200 and not isinstance(document, list):
            # An error answered as 200 is one of a method's own refusals; transport-level ones carry a 4xx.
            assert message["error"]["code"] not in (-32700,), (message, case)


class Failures(logging.Handler):
    """The gateway's errors: each is an exception it did not expect, whatever the client then got."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fuzz(world: World, case: Exchange) -> None:
    failures = Failures()
    logger = logging.getLogger("mcp_gateway")
    logger.addHandler(failures)
    try:
        with override_settings(**dict(case.overrides)):
            world.run(asyncio.wait_for(exchange(world, case), ANSWER_WITHIN * 3))
    finally:
        logger.removeHandler(failures)
    assert not failures.records, ([failures.format(r) for r in failures.records], case)


# --- generated input -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**30, max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "\u2028", "\U0001f600", "a" * 5000, "demo.echo", "memo://readme"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def params_for(draw: st.DrawFn, method: str) -> Any:
    """Mostly a plausible params object for ``method``, with values mutated; sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    params: dict[str, Any] = {}
    if method == "initialize":
        params = {
            "protocolVersion": draw(st.sampled_from([*VERSIONS, "1999-01-01"]) | json_values),
            "capabilities": draw(st.just({}) | json_values),
            "clientInfo": {"name": "fuzz", "version": "1"},
        }
    elif method == "tools/call":
        params = {"name": draw(st.sampled_from(NAMES) | st.text(max_size=30) | json_values)}
        params["arguments"] = draw(
            st.fixed_dictionaries({"text": scalars}) | st.fixed_dictionaries({"a": scalars, "b": scalars}) | json_values
        )
    elif method == "prompts/get":
        params = {"name": draw(st.sampled_from(NAMES) | json_values), "arguments": draw(json_values)}
    elif method == "resources/read":
        params = {"uri": draw(st.sampled_from(URIS) | st.text(max_size=30) | json_values)}
    elif method == "subscriptions/listen":
        params = {"notifications": draw(st.just({"toolsListChanged": True}) | json_values)}
    elif method == "logging/setLevel":
        params = {"level": draw(st.sampled_from(["debug", "error"]) | json_values)}
    if draw(st.booleans()):
        params["_meta"] = draw(st.just(META) | st.just({"progressToken": 7, **META}) | json_values)
    return params


def mostly(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any], tenths: int = 9) -> st.SearchStrategy[Any]:
    """``likely`` that many tenths of the time, else ``other``: plausible input reaches further."""
    return st.integers(0, 9).flatmap(lambda n: likely if n < tenths else other)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    """A JSON-RPC message: a request, a notification, a response, or a broken envelope."""
    method = draw(mostly(st.sampled_from(METHODS), st.text(max_size=20) | json_values))
    message: dict[str, Any] = {"jsonrpc": draw(mostly(st.just("2.0"), json_values))}
    shape = draw(st.sampled_from(["request"] * 6 + ["notification", "response", "anything"]))
    if shape == "anything":
        return draw(json_values)
    if shape == "response":
        message["id"] = draw(st.integers() | st.text(max_size=8))
        message[draw(st.sampled_from(["result", "error"]))] = draw(json_values)
        return message
    message["method"] = method
    if shape == "request":
        message["id"] = draw(mostly(st.integers(-(2**70), 2**70) | st.text(max_size=8), json_values))
    if draw(st.integers(0, 4)):
        message["params"] = draw(params_for(method if isinstance(method, str) else ""))
    return message


HOSTILE_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"\xff\xfe",
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"\\ud800"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.add","arguments":{"a":NaN,"b":1}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.add","arguments":{"a":1'
    + b"0" * 5000
    + b',"b":1}}}',
    b'{"jsonrpc":"2.0","id":' + b"9" * 4000 + b',"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.echo\\u0000","arguments":{}}}',
    b"[" + b'{"jsonrpc":"2.0","id":1,"method":"ping"},' * 150 + b"1]",
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"'
    + b"x" * 200_000
    + b'"}}}',
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(HOSTILE_BODIES))
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        return json.dumps(draw(st.lists(messages(), max_size=6))).encode()
    return json.dumps(draw(messages())).encode()


def header_values(name: str, options: list[str]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Absent, one of ``options``, other bytes (no line breaks: the HTTP server refuses those), or twice."""
    one = st.sampled_from([option.encode() for option in options]) | st.binary(max_size=20).map(
        lambda value: value.replace(b"\r", b"").replace(b"\n", b"")
    )
    return st.lists(one, max_size=2).map(lambda values: [(name.encode(), value) for value in values])


def _mirrored(message: Any) -> list[tuple[bytes, bytes]]:
    """A 2026-07-28 request's headers as the spec asks (the body's method and name), its ``_meta`` filled in."""
    headers = [(b"mcp-protocol-version", b"2026-07-28")]
    if isinstance(message, dict) and isinstance(message.get("method"), str):
        headers.append((b"mcp-method", message["method"].encode("utf-8", "replace")))
        params = message.setdefault("params", {})
        if isinstance(params, dict):
            name = params.get("uri" if message["method"] == "resources/read" else "name")
            if isinstance(name, str):
                headers.append((b"mcp-name", name.encode("utf-8", "replace")))
            meta = params.get("_meta")
            params["_meta"] = {**(meta if isinstance(meta, dict) else {}), **META}
    return headers


@st.composite
def exchanges(draw: st.DrawFn, world: World, paths: list[str]) -> Exchange:
    """A request: coherent headers around a fuzzed message (stateless, or in a session), or chaos throughout."""
    path = draw(mostly(st.sampled_from(paths[:2]), st.sampled_from(paths), 8))
    others = st.sampled_from(["GET", "GET", "GET", "DELETE", "PUT", "OPTIONS", "HEAD"])
    method = draw(mostly(st.just("POST"), others, 8))
    headers: list[tuple[bytes, bytes]] = []
    auth = draw(mostly(st.just("key"), st.sampled_from(["none", "wrong", "twice"])))
    if auth != "none":
        headers.append((b"authorization", f"Bearer {world.secret if auth != 'wrong' else 'sk-not-a-key'}".encode()))
        if auth == "twice":
            headers.append((b"authorization", f"Bearer {world.secret}".encode()))
    mode = draw(st.sampled_from(["stateless", "stateless", "session", "session", "chaos"]))
    resume: tuple[int, str] | None = None
    session: tuple[str, str] | None = None
    overrides: list[tuple[str, Any]] = [("MCP_POST_RESPONSE", draw(st.sampled_from(["auto", "auto", "sse", "json"])))]
    query = b""
    if path.endswith("/messages"):
        query = draw(
            mostly(
                st.just(world.legacy.session_query),
                st.sampled_from([b"", b"session_id=", b"session_id=nope", b"session_id=%ff&session_id=x"]),
            )
        )
    if mode == "chaos":
        body = draw(bodies())
        version = draw(st.sampled_from([None, *VERSIONS, "2030-01-01"]))
        if version is not None:
            headers.append((b"mcp-protocol-version", version.encode()))
        some_session = draw(st.sampled_from([None, "deadbeef", *sorted(world.sessions.values())]))
        if some_session is not None:
            headers.append((b"mcp-session-id", some_session.encode()))
        headers += draw(header_values("mcp-method", METHODS))
        headers += draw(header_values("mcp-name", [*NAMES, *URIS]))
        headers += draw(header_values("last-event-id", ["x_1-0", "ab12_1-0", "ab12_\u00b2-0", "ab12_1-0-0"]))
        overrides.append(("MAX_REQUEST_BYTES", draw(st.sampled_from([1024, 20 * 1024 * 1024]))))
    else:
        message = draw(mostly(messages(), st.lists(messages(), max_size=5)))
        if mode == "stateless":
            headers += _mirrored(message)
        else:
            endpoint = path if path in ("/mcp", "/mcp/safe") and draw(mostly(st.just(True), st.just(False))) else "/mcp"
            version = draw(st.sampled_from(VERSIONS[1:4]))
            session = (endpoint, version)
            headers += [(b"mcp-protocol-version", version.encode())] if draw(st.booleans()) else []
            if method == "GET" and draw(mostly(st.just(True), st.just(False), 7)):
                resume = (draw(st.integers(0, 19)), draw(st.sampled_from(sorted(FORGERIES))))
        body = json.dumps(message).encode()
        if draw(st.integers(0, 9)) == 0:
            body = draw(st.sampled_from(HOSTILE_BODIES))
    accept = ["application/json, text/event-stream", "application/json", "*/*", "text/event-stream", "text/html"]
    headers += draw(mostly(st.just([(b"accept", accept[0].encode())]), header_values("accept", accept), 8))
    content = ["application/json", "application/json; charset=utf-8", "text/plain"]
    headers += draw(
        mostly(st.just([(b"content-type", b"application/json")]), header_values("content-type", content), 8)
    )
    headers += draw(mostly(st.just([]), header_values("origin", ["http://localhost", "http://evil.example"])))
    chunk = draw(mostly(st.just(0), st.integers(1, 512), 8))
    return Exchange(method, path, headers, body, query, resume, session, chunk, tuple(overrides))


# --- the runs ------------------------------------------------------------------------------------


def _runs(world: World, paths: list[str], examples: int) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        fuzz(world, data.draw(exchanges(world, paths)))

    run()


def test_fuzzed_requests_to_the_streamable_http_endpoints_get_json_rpc_answers(world: World) -> None:
    _runs(world, ["/mcp", "/mcp/safe", "/mcp/nosuch"], examples=1000)
    assert world.requests >= 1000


def test_fuzzed_requests_to_the_legacy_sse_endpoints_get_json_rpc_answers(world: World) -> None:
    _runs(world, ["/mcp/messages", "/mcp/sse", "/mcp/safe/sse"], examples=500)
    assert world.requests >= 500


def test_fuzzed_stateless_requests_with_mirrored_headers_reach_the_methods(world: World) -> None:
    """Well-formed 2026-07-28 envelopes with fuzzed params: past the transport checks, into each method."""

    @settings(FUZZ, max_examples=700)
    @given(message=messages())
    def run(message: Any) -> None:
        headers = [*auth_headers(world.secret), *_mirrored(message)]
        fuzz(world, Exchange("POST", "/mcp", headers, json.dumps(message).encode()))

    run()
    assert world.requests >= 700
