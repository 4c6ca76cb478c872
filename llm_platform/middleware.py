"""The /v1/ contract for Django's view stack: input refused early, every error as JSON, the gateway's headers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from routing.chat import request_id_new
from tenants.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PlatformError,
    RateLimited,
)
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


def _is_json(response: HttpResponseBase) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"


def api_error_shape(response: HttpResponseBase) -> HttpResponseBase:
    """The response itself if it is JSON or a success; otherwise the same status as an OpenAI-style error."""
    status = response.status_code
    if status < 400 or _is_json(response):
        return response
    kind, code = _STATUS_ERRORS.get(status, (PlatformError, "api_error" if status >= 500 else "http_error"))
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    message = f"{phrase}."
    if status == 405:
        message = f"Method not allowed; this route accepts: {response.get('Allow', 'other methods')}."
    elif status >= 500:
        message = "The platform failed to handle this request."
    error = kind(message, code=code, status=status)
    shaped = error_response(error)
    for name in ("Allow", "Retry-After", "x-request-id", "WWW-Authenticate"):
        if name in response:
            shaped[name] = response[name]
    return shaped


class RequestIdMiddleware:
    """The /v1/ contract on Django's view stack (the ninja API, unknown /v1/ routes).

    Input no route can use is refused before any view (``api_input_check``); an error any
    layer below answered in its own format (an HTML page, ninja's empty 405) leaves as an
    OpenAI-style JSON error with the same status; ``x-request-id`` and
    ``x-gateway-overhead-ms`` are added where missing. Everything served here is the
    gateway's own work, so the overhead is the whole time.
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
        response = api_error_shape(response)
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
