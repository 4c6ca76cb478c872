"""Untrusted request input every front door reads the same way: the JSON body and the credential header."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from core.errors import AuthenticationFailed, InvalidRequest

# Deeper documents are refused: nothing an API client sends legitimately comes close, and
# re-encoding (for the upstream, the usage record, pydantic) recurses once per level.
MAX_JSON_DEPTH = 128
# A credential header longer than this is refused before anything else reads it (keys are
# ~46 characters; the HTTP server itself refuses a header block over 16 KB).
MAX_CREDENTIAL_BYTES = 4096

# A UTF-16 surrogate written as a JSON escape: the only way a lone surrogate gets into a body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _invalid(message: str, code: str = "invalid_json") -> InvalidRequest:
    return InvalidRequest(message, code=code)


def json_body_parse(body: bytes) -> Any:
    """The JSON document in ``body``, or an ``InvalidRequest`` (400) that says what is wrong with it.

    Beyond ``json.loads``: a document nested deeper than ``MAX_JSON_DEPTH`` and strings
    holding a lone UTF-16 surrogate (valid JSON, but not Unicode: it cannot be encoded to
    send upstream or store) are refused here, so no later stage meets them. The extra work
    only runs for bodies that could hold either (many brackets, a surrogate escape).
    """
    try:
        document = json.loads(body)
    except RecursionError:
        raise _invalid(f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).") from None
    except ValueError:  # also UnicodeDecodeError: the body is not UTF-8
        raise _invalid("We could not parse the JSON body of your request. The body must be valid JSON.") from None
    deep = isinstance(document, dict | list) and body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    surrogates = _SURROGATE_ESCAPE.search(body) is not None
    if deep or surrogates:
        _document_check(document, depth=deep, surrogates=surrogates)
    return document


def _document_check(document: Any, *, depth: bool, surrogates: bool) -> None:
    """Walk the document without recursion; refuse excessive nesting and unencodable strings."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            if depth and level > MAX_JSON_DEPTH:
                raise _invalid(f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).")
            if surrogates:
                for name in value:
                    _text_check(name)
            stack.extend((item, level + 1) for item in value.values())
        elif isinstance(value, list):
            if depth and level > MAX_JSON_DEPTH:
                raise _invalid(f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).")
            stack.extend((item, level + 1) for item in value)
        elif surrogates and isinstance(value, str):
            _text_check(value)


def _text_check(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(
            "The JSON body contains a lone UTF-16 surrogate escape (such as \\ud800), which is not valid "
            "Unicode; send text as UTF-8 or as complete surrogate pairs.",
            code="invalid_unicode",
        ) from None


def credential_header(headers: Iterable[tuple[bytes, bytes]], name: bytes = b"authorization") -> str | None:
    """The one ``name`` header of a request (raw ASGI headers), or None when there is none.

    Two of them are refused, never resolved: one proxy or client library keeps the first,
    another the last, so either choice bills or authorises someone the sender did not mean.
    """
    found: bytes | None = None
    for header, value in headers:
        if header.lower() != name:
            continue
        if found is not None:
            raise AuthenticationFailed(
                f"The request carries more than one {name.decode()} header; send exactly one.",
                code="ambiguous_credentials",
            )
        found = value
    if found is None:
        return None
    if len(found) > MAX_CREDENTIAL_BYTES:
        raise AuthenticationFailed(
            f"The {name.decode()} header is longer than {MAX_CREDENTIAL_BYTES} bytes; it cannot hold an API key.",
            code="invalid_authorization_header",
        )
    return found.decode("latin-1")
