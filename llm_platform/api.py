"""The NinjaAPI under /v1: apps' routers joined, key auth, and the one OpenAI-style error envelope."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from audit.api import router as audit_router
from core.errors import AuthenticationFailed, InvalidRequest, NotFound, PayloadTooLarge, PlatformError
from llm_platform.middleware import error_response as platform_error_response
from routing.api import router as routing_router
from routing.ml.api import router as routing_ml_router
from routing.model_call import request_id_new
from tenants.auth import KeyContext, key_authenticate_request

logger = logging.getLogger(__name__)


class ApiKeyAuth(HttpBearer):
    """Bearer API key auth; its return value (a ``KeyContext``) becomes ``request.auth``."""

    is_async = True

    async def __call__(self, request: HttpRequest) -> KeyContext:  # type: ignore[override]
        # The raw ASGI headers: Django's request.headers joins repeated ones into one value.
        scope = getattr(request, "scope", None)
        headers: Iterable[tuple[bytes, bytes]]
        if scope is not None:
            headers = scope.get("headers", ())
        else:  # WSGI (Django's test client): the joined value is all there is
            value = request.headers.get("Authorization")
            headers = [(b"authorization", value.encode("latin-1", "replace"))] if value is not None else []
        return await key_authenticate_request(headers, ip=request.META.get("REMOTE_ADDR"), endpoint=request.path)

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover - __call__ does the work
        raise NotImplementedError


class PlatformApi(NinjaAPI):
    """The ninja API, whose OpenAPI document also describes the endpoints the Channels consumers serve."""

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None) -> Any:
        from llm_platform.openapi_consumers import consumer_paths_add

        return consumer_paths_add(super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params))


api = PlatformApi(
    title="LLM platform API",
    version="1",
    description="OpenAI-compatible API: chat completions, completions and embeddings (served by Channels "
    "consumers, streaming with SSE), models, feedback and the audit trail.",
    auth=ApiKeyAuth(),
    urls_namespace="api",
)
api.add_router("/", routing_router)
api.add_router("/audit", audit_router)

api.add_router("/", routing_ml_router)


def error_response(request: HttpRequest, exc: PlatformError) -> HttpResponse:
    response = platform_error_response(exc)
    response["x-request-id"] = request_id_new()
    return response


@api.exception_handler(PlatformError)
def platform_error(request: HttpRequest, exc: PlatformError) -> HttpResponse:
    return error_response(request, exc)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(request, AuthenticationFailed("Invalid or missing API key."))


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(
        request, InvalidRequest(first.get("msg", "Invalid request."), param=param, code="invalid_value")
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    error = NotFound(str(exc)) if exc.status_code == 404 else PlatformError(str(exc), status=exc.status_code)
    return error_response(request, error)


@api.exception_handler(RequestDataTooBig)
def request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(request, PayloadTooLarge(f"The request body exceeds {settings.MAX_REQUEST_BYTES} bytes."))


@api.exception_handler(Exception)
def unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled API error on %s", request.path)
    return error_response(request, PlatformError("The platform failed to handle this request."))
