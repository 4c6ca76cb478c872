"""Response headers every API response carries, also those served by Django's view stack."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from routing.chat import request_id_new


class RequestIdMiddleware:
    """Adds ``x-request-id`` and ``x-gateway-overhead-ms`` to ``/v1/`` responses that lack them.

    Everything served here is the gateway's own work, so the overhead is the whole time.
    """

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _stamp(request: HttpRequest, response: HttpResponseBase, started: float) -> HttpResponseBase:
        if request.path.startswith("/v1/"):
            if "x-request-id" not in response:
                response["x-request-id"] = request_id_new()
            response["x-gateway-overhead-ms"] = f"{(time.perf_counter() - started) * 1000:.3f}"
        return response

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        started = time.perf_counter()
        if self.is_async:
            return self._acall(request, started)
        return self._stamp(request, self.get_response(request), started)  # type: ignore[arg-type]

    async def _acall(self, request: HttpRequest, started: float) -> HttpResponseBase:
        response = await self.get_response(request)  # type: ignore[misc]
        return self._stamp(request, response, started)
