"""Who made a change from the admin, and from where: the ``actor`` and ``ip`` every service records."""

from __future__ import annotations

from django.http import HttpRequest


def actor_of(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def ip_of(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")
