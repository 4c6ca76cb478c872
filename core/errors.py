"""The platform's error family: each carries its HTTP status and OpenAI error type/code."""

from __future__ import annotations

import json
from typing import Any


class PlatformError(Exception):
    """An error a client should see as an OpenAI-style JSON body with ``status``."""

    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


class InvalidRequest(PlatformError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(PlatformError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PlatformError):
    status = 403
    type = "permission_error"


class NotFound(PlatformError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(PlatformError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(PlatformError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(PlatformError):
    """The provider failed: unreachable (502), overloaded (503) or too slow (504)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ServiceUnavailable(PlatformError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
