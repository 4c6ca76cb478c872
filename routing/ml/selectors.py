"""Reads for the hot path: smart groups and verified router artifacts, cached per process."""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from core import registry
from core.epoch import SharedEpoch
from core.hot_reads import ReloadedValue
from routing.ml.models import RouterArtifact, SmartGroup, SmartGroupTenantShare, TenantRoutingData
from routing.ml.routers import LearnedRouter, router_from_bytes
from tenants.models import Tenant

logger = logging.getLogger(__name__)


class ArtifactIntegrityError(Exception):
    """A router artifact's bytes do not match the SHA-256 recorded when it was trained."""


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    id: int
    label: str
    kind: str
    calibration: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class GroupState:
    """A smart group as the hot path uses it: plain values, tenant overrides resolved."""

    id: int
    name: str
    strong_model: str
    weak_model: str
    strong_price: float
    weak_price: float
    kind: str
    strong_share: float
    rules: dict[str, Any]
    mode: str
    active: ArtifactRef | None
    shadow: ArtifactRef | None
    ab: ArtifactRef | None
    ab_percent: int
    tenant_shares: dict[int, float] = field(default_factory=dict)
    strong_tenants: frozenset[int] = frozenset()
    weak_tenants: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Snapshot:
    groups: dict[str, GroupState]
    keep_text_tenants: frozenset[int]


def _ref(artifact: RouterArtifact | None) -> ArtifactRef | None:
    if artifact is None:
        return None
    return ArtifactRef(artifact.pk, artifact.label, artifact.kind, tuple(artifact.calibration or ()))


def _snapshot_load_sync() -> Snapshot:
    heavy = ("active_artifact__blob", "shadow_artifact__blob", "ab_artifact__blob")
    groups = list(
        SmartGroup.objects.filter(enabled=True)
        .select_related("active_artifact", "shadow_artifact", "ab_artifact")
        .defer(*heavy)
    )
    shares: dict[int, dict[int, float]] = {}
    for group_id, tenant_id, share in SmartGroupTenantShare.objects.values_list(
        "group_id", "tenant_id", "strong_share"
    ):
        shares.setdefault(group_id, {})[tenant_id] = share
    slugs = {
        str(slug)
        for group in groups
        for name in ("strong_tenants", "weak_tenants")
        for slug in (group.rules or {}).get(name, ())
    }
    slug_ids = dict(Tenant.objects.filter(slug__in=slugs).values_list("slug", "pk")) if slugs else {}

    def tenant_ids(group: SmartGroup, name: str) -> frozenset[int]:
        return frozenset(slug_ids[s] for s in (group.rules or {}).get(name, ()) if s in slug_ids)

    states = {
        group.name: GroupState(
            id=group.pk,
            name=group.name,
            strong_model=group.strong_model,
            weak_model=group.weak_model,
            strong_price=group.strong_price,
            weak_price=group.weak_price,
            kind=group.router_kind,
            strong_share=group.strong_share,
            rules=dict(group.rules or {}),
            mode=group.mode,
            active=_ref(group.active_artifact),
            shadow=_ref(group.shadow_artifact),
            ab=_ref(group.ab_artifact) if group.ab_percent else None,
            ab_percent=group.ab_percent,
            tenant_shares=shares.get(group.pk, {}),
            strong_tenants=tenant_ids(group, "strong_tenants"),
            weak_tenants=tenant_ids(group, "weak_tenants"),
        )
        for group in groups
    }
    keep = frozenset(TenantRoutingData.objects.filter(keep_prompt_text=True).values_list("tenant_id", flat=True))
    return Snapshot(states, keep)


def artifact_load_sync(artifact_id: int) -> LearnedRouter:
    """Load an artifact from the database, verify its SHA-256, and only then rebuild the router."""
    close_old_connections()
    artifact = RouterArtifact.objects.get(pk=artifact_id)
    blob = bytes(artifact.blob)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != artifact.sha256:
        raise ArtifactIntegrityError(
            f"router artifact {artifact.group_id}/{artifact.label} fails its checksum "
            f"(recorded {artifact.sha256[:12]}…, found {digest[:12]}…); refusing to load it"
        )
    return router_from_bytes(blob, kind=artifact.kind, backend=artifact.backend, params=artifact.params)


_NO_GROUPS = Snapshot({}, frozenset())

# Router inference (and loading) runs here, never on the event loop.
inference_executor = ThreadPoolExecutor(max_workers=settings.ML_ROUTER_THREADS, thread_name_prefix="smart-router")


class SmartCache:
    """Enabled smart groups by public name and loaded routers by artifact id, for this process.

    Groups reload every ``ML_ROUTER_CACHE_TTL`` seconds or as soon as the shared epoch
    moves (a promotion, rollback or edit anywhere); loaded routers are kept while the
    epoch stands, so a promotion reaches every process within ``KEY_REVOCATION_POLL``.
    """

    def __init__(self) -> None:
        self._loaded: ReloadedValue[Snapshot] = ReloadedValue(
            "smart groups", _snapshot_load_sync, lambda: settings.ML_ROUTER_CACHE_TTL
        )
        self._routers: dict[int, LearnedRouter] = {}
        self._failed: dict[int, str] = {}  # artifact id -> why it cannot be used (until the epoch moves)
        self._lock = threading.Lock()
        self._warmed: Snapshot | None = None
        self.epoch = SharedEpoch("smart-routing")

    @property
    def snapshot(self) -> Snapshot:
        return self._loaded.value or _NO_GROUPS

    @snapshot.setter
    def snapshot(self, value: Snapshot) -> None:
        self._loaded.set(value)

    @property
    def _loaded_at(self) -> float:
        return self._loaded.loaded_at

    @_loaded_at.setter
    def _loaded_at(self, value: float) -> None:
        self._loaded.loaded_at = value

    def clear(self) -> None:
        self._loaded.invalidate()
        with self._lock:
            self._routers = {}
            self._failed = {}

    async def current(self) -> Snapshot:
        """The groups, reloaded in the background (database away: the cached ones, or none yet)."""
        if await self.epoch.moved():
            self.clear()
        snapshot = await self._loaded.get()
        if snapshot is None:
            return _NO_GROUPS
        if snapshot is not self._warmed:
            self._warmed = snapshot
            self._warm_up()
        return snapshot

    def _warm_up(self) -> None:
        """Load the routers the groups use in the background, so no request waits for a first load."""
        for group in self.snapshot.groups.values():
            for ref in (group.active, group.shadow, group.ab):
                if ref is not None and ref.id not in self._routers and ref.id not in self._failed:
                    inference_executor.submit(self._load_quietly, ref.id)

    def _load_quietly(self, artifact_id: int) -> None:
        try:
            self.router(artifact_id)
        except ArtifactIntegrityError:
            logger.error("router artifact %s cannot be loaded", artifact_id, exc_info=True)

    def router(self, artifact_id: int) -> LearnedRouter:
        """The verified router for an artifact; call from a worker thread (it may hit the database)."""
        router = self._routers.get(artifact_id)
        if router is not None:
            return router
        with self._lock:
            router = self._routers.get(artifact_id)
            if router is not None:
                return router
            if artifact_id in self._failed:
                raise ArtifactIntegrityError(self._failed[artifact_id])
            try:
                router = artifact_load_sync(artifact_id)
            except (ArtifactIntegrityError, RouterArtifact.DoesNotExist, ValueError, OSError) as exc:
                # Remembered so a bad artifact costs one load per epoch, not one per request.
                self._failed[artifact_id] = str(exc)
                raise ArtifactIntegrityError(str(exc)) from exc
            finally:
                # Loads are rare: don't keep a database connection open in an inference thread.
                if not connection.in_atomic_block:
                    connection.close()
            self._routers = {**self._routers, artifact_id: router}
        return router


smart_cache = SmartCache()
registry.register("routing.smart_cache", reset=smart_cache.clear)
