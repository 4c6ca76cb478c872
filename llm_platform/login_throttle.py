"""Admin login throttling: django-axes counting failures per username and client IP in the database, a cool-off
that doubles with each repeated lockout, and every failure, lockout and admin login audited.

The counts live in the database (axes' AccessAttempt and AccessFailureLog), so every server
process sees the same ones. A lockout holds one username from one address: an attacker
elsewhere cannot lock the real admin out, and the right password is refused while it holds.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record

# A lockout that starts within this long after the previous one ended doubles the cool-off.
BACKOFF_RESET = dt.timedelta(days=1)
# Enough past lockouts to reach any cap: the cool-off doubles with each.
BACKOFF_HISTORY = 32
USERNAME_LIMIT = 150


def client_ip(request: HttpRequest) -> str | None:
    """The address the server saw. Behind a proxy, ``serve --proxy-headers`` puts the forwarded client there;
    never read X-Forwarded-For here, where a client could forge it to dodge its lockout."""
    return request.META.get("REMOTE_ADDR")


def login_username(request: HttpRequest | None, credentials: dict[str, Any] | None = None) -> str | None:
    """The username tried, normalised as the login form does (NFKC), so look-alike spellings share one count."""
    field = get_user_model().USERNAME_FIELD
    if credentials:
        value = credentials.get(field)
    else:
        value = request.POST.get(field) if request is not None and request.method == "POST" else None
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else None


def _cooloff_base() -> dt.timedelta:
    return dt.timedelta(seconds=settings.ADMIN_LOGIN_COOLOFF)


def _cooloff_max() -> dt.timedelta:
    return dt.timedelta(seconds=max(settings.ADMIN_LOGIN_COOLOFF_MAX, settings.ADMIN_LOGIN_COOLOFF))


def cooloff_after(lockouts: list[dt.datetime]) -> dt.timedelta:
    """The cool-off of the newest of these lockout times (oldest first): each one that starts within
    BACKOFF_RESET of the previous one's end doubles it, up to ADMIN_LOGIN_COOLOFF_MAX."""
    base, cap = _cooloff_base(), _cooloff_max()
    cooloff, previous = base, None
    for started in lockouts:
        if previous is not None and started - previous <= cooloff + BACKOFF_RESET:
            cooloff = min(cooloff * 2, cap)
        else:
            cooloff = base
        previous = started
    return cooloff


def cooloff(request: HttpRequest | None) -> dt.timedelta:
    """AXES_COOLOFF_TIME: how long this username and address stay locked out after their last failure."""
    if request is None:
        return _cooloff_base()
    ip = getattr(request, "axes_ip_address", None) or client_ip(request)
    recent = (
        AccessFailureLog.objects.filter(username=login_username(request), ip_address=ip, locked_out=True)
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)[:BACKOFF_HISTORY]
    )
    return cooloff_after(sorted(recent))


def duration_text(length: dt.timedelta) -> str:
    seconds = int(length.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _http_login(request: HttpRequest | None) -> bool:
    # The test client and shells log in without a request (or with an empty one): nobody to throttle or audit.
    return request is not None and request.method is not None


def _audit_name(username: str | None) -> str:
    return (username or "").replace("\x00", "")[:USERNAME_LIMIT]


class ThrottledLoginBackend(AxesStandaloneBackend):
    """Refuses a locked-out username and address before any password is checked (listed before ModelBackend)."""

    def authenticate(  # type: ignore[override]
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if not _http_login(request):
            return None
        super().authenticate(request, username, password, **kwargs)
        return None


class LoginThrottleHandler(AxesDatabaseHandler):
    """Axes' database handler, with cool-offs that differ per username and address, and the audit trail."""

    def clean_expired_user_attempts(self, request: Any = None, credentials: Any = None) -> int:
        # Axes deletes every attempt older than *this* request's cool-off; with cool-offs that grow per
        # username and address that would end someone else's longer lockout early. Delete this client's
        # expired attempts, and anyone's past the longest possible cool-off.
        count, _ = AccessAttempt.objects.filter(attempt_time__lte=timezone.now() - _cooloff_max()).delete()
        if request is not None and hasattr(request, "axes_ip_address"):
            threshold = get_cool_off_threshold(request)
            for attempts in self.filter_user_attempts(request, credentials):
                count += attempts.filter(attempt_time__lte=threshold).delete()[0]
        return count

    def remove_out_of_limit_failure_logs(self, *, username: str, limit: int | None = None) -> int:
        # Axes 8.3 deletes the newest rows past the limit, which drops the lockout just recorded (and with it
        # the backoff); keep the lockouts and the newest failures instead.
        limit = getattr(settings, "AXES_ACCESS_FAILURE_LOG_PER_USER_LIMIT", 1000) if limit is None else limit
        stale = AccessFailureLog.objects.filter(username=username).order_by("-locked_out", "-attempt_time")[limit:]
        count, _ = AccessFailureLog.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
        return count

    def user_login_failed(self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
        was_locked = bool(getattr(request, "axes_locked_out", False))
        super().user_login_failed(sender, credentials, request, **kwargs)
        if not _http_login(request):
            return
        username = _audit_name(login_username(request, credentials))
        ip = getattr(request, "axes_ip_address", None)
        audit_record(
            actor="anonymous",
            action="login.failure",
            target=f"user:{username}",
            outcome=AuditEvent.Outcome.DENIED if was_locked else AuditEvent.Outcome.FAILURE,
            ip=ip,
            details={
                "username": username,
                "reason": "locked_out" if was_locked else "invalid_credentials",
                "path": request.path[:200],
            },
        )
        if request.axes_locked_out and not was_locked:
            length = get_cool_off(request) or _cooloff_base()
            audit_record(
                actor="anonymous",
                action="login.lockout",
                target=f"user:{username}",
                outcome=AuditEvent.Outcome.DENIED,
                ip=ip,
                details={
                    "username": username,
                    "failures": request.axes_failures_since_start,
                    "cooloff_seconds": int(length.total_seconds()),
                    "locked_until": (request.axes_attempt_time + length).isoformat(),
                },
            )

    def user_logged_in(self, sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        super().user_logged_in(sender, request, user, **kwargs)
        if _http_login(request):
            audit_record(
                actor=f"user:{user.get_username()}",
                action="login.success",
                target="admin",
                ip=getattr(request, "axes_ip_address", None),
                details={"username": _audit_name(user.get_username()), "path": request.path[:200]},
            )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the admin's own page, 429 with Retry-After, saying when to try again."""
    from django.contrib import admin

    length = get_cool_off(request) or _cooloff_base()
    last = AccessAttempt.objects.filter(
        username=login_username(request, credentials), ip_address=getattr(request, "axes_ip_address", None)
    ).aggregate(last=Max("attempt_time"))["last"]
    until = (last or timezone.now()) + length
    context = {
        **admin.site.each_context(request),
        "title": "Too many failed logins",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff": duration_text(length),
        "until": until,
    }
    response = render(request, "admin/lockout.html", context, status=429)
    response["Retry-After"] = str(max(1, int((until - timezone.now()).total_seconds())))
    return response
