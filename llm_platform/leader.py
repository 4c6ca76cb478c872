"""The scheduler leader lease: Redis (SET NX PX + fencing token) or a database row."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from llm_platform.models import SchedulerLease

logger = logging.getLogger(__name__)

# Extend only if the lease is still ours (holder and token), atomically.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease(Protocol):
    def acquire(self) -> int | None:
        """Take the lease if it is free or lapsed; return the new fencing token, or None."""

    def renew(self, token: int) -> bool:
        """Extend the lease if this holder still holds it with ``token``."""

    def release(self, token: int) -> None:
        """Give the lease up so a standby takes over at once."""


class RedisLease:
    """``SET key holder:token NX PX ttl``; the token comes from ``INCR`` so it only grows."""

    def __init__(self, name: str, holder: str, ttl: float, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=max(ttl / 3, 1), socket_connect_timeout=2)
        self.key = f"{settings.CACHE_KEY_PREFIX}:lease:{name}"
        self.fence_key = f"{self.key}:fence"
        self.holder = holder
        self.ttl_ms = int(ttl * 1000)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)

    def _value(self, token: int) -> str:
        return f"{self.holder}:{token}"

    def acquire(self) -> int | None:
        if self.client.exists(self.key):
            return None
        token = int(self.client.incr(self.fence_key))
        if self.client.set(self.key, self._value(token), nx=True, px=self.ttl_ms):
            return token
        return None

    def renew(self, token: int) -> bool:
        return bool(self._renew(keys=[self.key], args=[self._value(token), self.ttl_ms]))

    def release(self, token: int) -> None:
        self._release(keys=[self.key], args=[self._value(token)])


class DatabaseLease:
    """A row taken and extended by conditional UPDATEs, so it holds on SQLite and PostgreSQL alike."""

    def __init__(self, name: str, holder: str, ttl: float) -> None:
        self.name = name
        self.holder = holder
        self.ttl = dt.timedelta(seconds=ttl)

    def acquire(self) -> int | None:
        now = timezone.now()
        try:
            with transaction.atomic():
                SchedulerLease.objects.get_or_create(name=self.name)
        except IntegrityError:
            pass  # another process created it at the same moment
        # One statement decides: only a lapsed (or never held) lease changes hands.
        taken = SchedulerLease.objects.filter(
            Q(expires_at__isnull=True) | Q(expires_at__lte=now), name=self.name
        ).update(holder=self.holder, token=F("token") + 1, expires_at=now + self.ttl)
        if not taken:
            return None
        return SchedulerLease.objects.values_list("token", flat=True).get(name=self.name)

    def renew(self, token: int) -> bool:
        return bool(
            SchedulerLease.objects.filter(name=self.name, holder=self.holder, token=token).update(
                expires_at=timezone.now() + self.ttl
            )
        )

    def release(self, token: int) -> None:
        SchedulerLease.objects.filter(name=self.name, holder=self.holder, token=token).update(expires_at=None)


def lease_for(holder: str, *, name: str = "beat", backend: str | None = None) -> Lease:
    """The configured lease: Redis when REDIS_URL is set (unless BEAT_LEASE_BACKEND says otherwise)."""
    backend = backend or settings.BEAT_LEASE_BACKEND
    if backend == "redis":
        return RedisLease(name, holder, settings.BEAT_LEASE_TTL, settings.REDIS_URL)
    return DatabaseLease(name, holder, settings.BEAT_LEASE_TTL)
