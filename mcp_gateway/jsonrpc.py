"""The JSON-RPC envelope of MCP requests: error codes and objects, message checks, body parsing, size bounds."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.errors import InvalidRequest, PlatformError
from tenants.request_input import json_body_parse

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RATE_LIMITED = -32029  # implementation-defined server error: a quota refused the call
UPSTREAM_ERROR = -32002  # implementation-defined server error: the upstream failed
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
RESPONSE_TOO_LARGE = -32003  # implementation-defined server error: the answer exceeds MCP_MAX_RESPONSE_BYTES


class RpcError(Exception):
    """A JSON-RPC error object, with the HTTP status a Streamable HTTP response should carry."""

    def __init__(self, code: int, message: str, *, data: Any = None, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.data, self.status = code, message, data, status

    def response(self, request_id: Any) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": request_id, "error": error}


def shown(value: Any, limit: int = 100) -> str:
    """A client's value as an error message quotes it: at most ``limit`` characters, never the whole of a huge one."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def platform_rpc_error(exc: PlatformError) -> RpcError:
    """The platform's errors (auth, scope, quota) as JSON-RPC errors with their HTTP status."""
    data = {"type": exc.type, "code": exc.code}
    return RpcError(INVALID_REQUEST, exc.message, data=data, status=exc.status)


@dataclass(frozen=True, slots=True)
class Message:
    """One validated JSON-RPC message from a client."""

    raw: dict[str, Any]
    method: str | None
    id: Any
    params: dict[str, Any]

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.raw


def message_parse(item: Any) -> Message:
    """Check the JSON-RPC 2.0 envelope; raise ``RpcError(-32600)`` when it is not one."""
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object.", status=400)
    request_id = item.get("id")
    if "id" in item and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise RpcError(INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer.", status=400)
    method = item.get("method")
    if method is None:
        if "id" in item and ("result" in item or "error" in item):
            return Message(item, None, request_id, {})
        raise RpcError(INVALID_REQUEST, "Invalid Request: no 'method'.", status=400)
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a non-empty string.", status=400)
    params = item.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'params' must be an object.", status=400)
    return Message(item, method, request_id, params)


def body_parse(body: bytes) -> Any:
    """The JSON document of a request body; anything that is not JSON the gateway can pass on is a parse error.

    Beyond malformed JSON that is extreme nesting and lone surrogates (``json_body_parse``)
    and NaN/Infinity, which Python's json reads but JSON has not: passed on, they would
    become ``null`` or fail the upstream connection's encoder.
    """
    if _batch_too_long(body, settings.MCP_MAX_BATCH):
        raise RpcError(
            INVALID_REQUEST,
            f"Invalid Request: a batch holds at most {settings.MCP_MAX_BATCH} messages; send the rest in another.",
            data={"type": "invalid_request_error", "code": "batch_too_large", "limit": settings.MCP_MAX_BATCH},
            status=400,
        )
    try:
        document = json_body_parse(body)
    except InvalidRequest as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc.message}", data=_parse_data(exc.code), status=400) from None
    if _NON_FINITE.search(body) is not None and _non_finite_in(document):
        raise RpcError(
            PARSE_ERROR,
            "Parse error: NaN, Infinity and -Infinity are not JSON numbers; send finite numbers (or strings).",
            data=_parse_data("invalid_json"),
            status=400,
        )
    return document


# Only a body holding one of these words can hold a non-finite number: the walk runs for those alone.
_NON_FINITE = re.compile(rb"NaN|Infinity")


def _parse_data(code: str | None) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code or "invalid_json"}


def _non_finite_in(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LEADING_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_element = json.JSONDecoder().raw_decode


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return index if match is None else match.end()


# The first try reads only the start of a large body: 101 messages of a flood fit in a few kilobytes.
_SCAN_PREFIX = 65536


def _batch_too_long(body: bytes, limit: int) -> bool:
    """Whether the body is a JSON array of more than ``limit`` elements, found without parsing past them.

    Parsing a 10 MB batch whole holds the event loop (and the GIL: a thread would not
    help) for a tenth of a second before its length could be checked; this reads at most
    ``limit`` + 1 elements, from the body's first 64 KB when they are there. A body it
    cannot read is left to the full parse to describe.
    """
    start = _LEADING_WHITESPACE.match(body).end()  # type: ignore[union-attr]  # it matches the empty string
    if body[start : start + 1] != b"[":
        return False
    if len(body) <= _SCAN_PREFIX:
        if body.count(b",") < limit:  # too few commas anywhere to separate more than ``limit`` elements
            return False
    else:
        # A cut through a character is dropped; the text then ends early, which the scan allows for.
        verdict = _elements_past(body[:_SCAN_PREFIX].decode(errors="ignore"), start, limit, whole=False)
        if verdict is not None:
            return verdict
    try:
        text = body.decode()
    except ValueError:
        return False
    return bool(_elements_past(text, start, limit, whole=True))


def _elements_past(text: str, start: int, limit: int, *, whole: bool) -> bool | None:
    """Whether the array opening at ``start`` has more than ``limit`` elements; None when the text (only the
    start of the body unless ``whole``) ends before that is known."""
    try:
        index = _skip(text, start + 1)
        for _ in range(limit):
            index = _skip(text, _element(text, index)[1])
            if index >= len(text):  # an element may have been cut short where the text ends
                return False if whole else None
            if text[index] != ",":
                return False
            index = _skip(text, index + 1)
        _element(text, index)  # one element more
        return True
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return False if whole else None


def response_too_large(request_id: Any) -> dict[str, Any]:
    limit = settings.MCP_MAX_RESPONSE_BYTES
    return RpcError(
        RESPONSE_TOO_LARGE,
        f"The answer exceeds {limit} bytes (MCP_MAX_RESPONSE_BYTES); ask for less at a time.",
        data={"type": "invalid_request_error", "code": "response_too_large", "limit": limit},
    ).response(request_id)


def response_encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode()


def response_dump(response: dict[str, Any]) -> bytes:
    """A response as JSON, or, past ``MCP_MAX_RESPONSE_BYTES``, the error saying so."""
    encoded = response_encode(response)
    if len(encoded) > settings.MCP_MAX_RESPONSE_BYTES:
        return response_encode(response_too_large(response.get("id")))
    return encoded
