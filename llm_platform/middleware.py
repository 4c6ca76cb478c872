"""The /v1/ contract for Django's part of the API: input refused early, every error as JSON, the gateway's headers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PlatformError,
    RateLimited,
)
from routing.model_call import request_id_new
from tenants.request_input import json_body_parse

API_PREFIX = "/v1/"

# The error each status becomes when a layer below the API (Django, ninja's router) answered
# it in its own format: an HTML page, an empty 405, a plain-text 400.
_STATUS_ERRORS: dict[int, tuple[type[PlatformError], str]] = {
    400: (InvalidRequest, "bad_request"),
    401: (AuthenticationFailed, "invalid_api_key"),
    403: (PermissionDenied, "forbidden"),
    404: (NotFound, "unknown_url"),
    405: (InvalidRequest, "method_not_allowed"),
    413: (PayloadTooLarge, "request_too_large"),
    429: (RateLimited, "rate_limit_exceeded"),
}


def _unencodable(text: str) -> bool:
    """NUL (PostgreSQL text cannot hold it) or a lone surrogate (not Unicode: cannot be encoded)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_text(param: str) -> InvalidRequest:
    # The param is named printably: the error is logged and may be stored, as the input may not.
    param = param.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return InvalidRequest(
        f"Invalid value for '{param}': text may not contain NUL characters or lone UTF-16 surrogates.",
        param=param,
        code="invalid_value",
    )


def _document_strings(document: Any) -> Iterable[tuple[str, str]]:
    """Every string in a JSON document (object keys too) with the dotted path of where it is."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for name, item in value.items():
                child = f"{path}.{name}" if path else str(name)
                yield child, name
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
        elif isinstance(value, str):
            yield path, value


def api_input_check(request: HttpRequest) -> None:
    """Refuse, before any view, input no /v1/ route can use: raises the ``PlatformError`` to answer.

    In one place for every route and parameter: a body over ``MAX_REQUEST_BYTES`` (413), and
    NUL or lone surrogates in any query parameter or JSON body string (400 naming it), which
    would otherwise fail deep inside the database driver.
    """
    try:
        body = request.body
    except RequestDataTooBig:
        body = None
    except ValueError:  # Django reads CONTENT_LENGTH with int(): repeated headers arrive joined ("0,0")
        raise InvalidRequest(
            "The Content-Length header is not one non-negative integer.", code="invalid_content_length"
        ) from None
    if body is None or len(body) > settings.MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"The request body exceeds {settings.MAX_REQUEST_BYTES} bytes.")
    try:
        query = request.GET
    except SuspiciousOperation as exc:  # e.g. more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        raise InvalidRequest(f"The query string is not acceptable: {exc}", code="invalid_query") from None
    for name, values in query.lists():
        if _unencodable(name):
            raise _bad_text(name)
        if any(_unencodable(value) for value in values):
            raise _bad_text(name)
    # A NUL reaches a parsed JSON string only as this escape (a raw one is invalid JSON and
    # the view's parser refuses it); lone surrogates are json_body_parse's to refuse.
    if b"\\u0000" in body:
        try:
            document = json_body_parse(body)
        except InvalidRequest:
            return  # the route's own parser says what is wrong with it
        for path, text in _document_strings(document):
            if "\x00" in text:
                raise _bad_text(path or "body")


def error_response(exc: PlatformError) -> HttpResponse:
    response = HttpResponse(exc.body_bytes(), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _json_type(content_type: bytes | str) -> bool:
    value = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return value.split(";")[0].strip().lower() == "application/json"


def api_error_body(status: int, allow: str | None = None) -> bytes:
    """The OpenAI-style error for ``status`` when a layer below the API answered it in its own format."""
    kind, code = _STATUS_ERRORS.get(status, (PlatformError, "api_error" if status >= 500 else "http_error"))
    try:
        message = f"{HTTPStatus(status).phrase}."
    except ValueError:
        message = "The request failed."
    if status == 405:
        message = f"Method not allowed; this route accepts: {allow or 'other methods'}."
    elif status >= 500:
        message = "The platform failed to handle this request."
    return kind(message, code=code, status=status).body_bytes()


# Headers of the original answer that still hold for its JSON replacement.
_KEPT_HEADERS = frozenset({b"allow", b"retry-after", b"www-authenticate", b"x-request-id", b"x-gateway-overhead-ms"})

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiErrorShape:
    """ASGI wrapper of Django's app: under /v1/ an error answered in any format but JSON leaves as an OpenAI-style
    error with the same status.

    At the ASGI level, not in Django's middleware chain, because some of Django's own
    refusals never pass through that chain (a query string that is not UTF-8 is a bare
    ``400`` from the handler itself); ninja's empty 405 and Django's HTML error pages are
    reshaped here too. Successful and JSON answers pass through untouched, unbuffered.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_shaped(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                if message["status"] >= 400 and not _json_type(content_type):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return  # the original body is dropped whole
                start, held = held, None
                original = [(bytes(name).lower(), bytes(value)) for name, value in start.get("headers") or []]
                kept = [(name, value) for name, value in original if name in _KEPT_HEADERS]
                if not any(name == b"x-request-id" for name, _ in kept):
                    kept.append((b"x-request-id", request_id_new().encode()))
                allow = next((value.decode("latin-1") for name, value in original if name == b"allow"), None)
                body = api_error_body(start["status"], allow)
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *kept]
                await send({"type": "http.response.start", "status": start["status"], "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_shaped)


class RequestIdMiddleware:
    """The /v1/ contract on Django's view stack (the ninja API, unknown /v1/ routes).

    Input no route can use is refused before any view (``api_input_check``), and
    ``x-request-id`` and ``x-gateway-overhead-ms`` are added where missing (errors in other
    formats are reshaped by ``ApiErrorShape`` around the whole app). Everything served here
    is the gateway's own work, so the overhead is the whole time.
    """

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _stamp(response: HttpResponseBase, started: float) -> HttpResponseBase:
        if "x-request-id" not in response:
            response["x-request-id"] = request_id_new()
        response["x-gateway-overhead-ms"] = f"{(time.perf_counter() - started) * 1000:.3f}"
        return response

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponseBase | None:
        try:
            api_input_check(request)
        except PlatformError as exc:
            return error_response(exc)
        return None

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        started = time.perf_counter()
        if self.is_async:
            return self._acall(request, started)
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)  # type: ignore[return-value]
        response = self._refusal(request) or self.get_response(request)
        return self._stamp(response, started)  # type: ignore[arg-type]

    async def _acall(self, request: HttpRequest, started: float) -> HttpResponseBase:
        if not request.path.startswith(API_PREFIX):
            return await self.get_response(request)  # type: ignore[misc]
        response = self._refusal(request) or await self.get_response(request)  # type: ignore[misc]
        return self._stamp(response, started)
