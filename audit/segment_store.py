"""Where durable audit segments are kept: a local directory or any Django storage, written once each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.core.files.base import ContentFile


class SegmentExists(Exception):
    """The store already holds this name: segments and manifests are written once, never replaced."""


class SegmentStore(Protocol):
    def folders(self) -> list[str]: ...
    def names(self, folder: str) -> list[str]: ...
    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...


class LocalSegmentStore:
    """A directory; each file is written to a temporary name, fsynced, linked to its name unless that
    exists (the link is the atomic create-if-absent), and the directory fsynced."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if entry.is_dir() and not entry.name.startswith("."))

    def names(self, folder: str) -> list[str]:
        directory = self.root / folder
        if not directory.is_dir():
            return []
        return sorted(f"{folder}/{entry.name}" for entry in directory.iterdir() if not entry.name.startswith("."))

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise SegmentExists(name)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, final)
        except FileExistsError:
            raise SegmentExists(name) from None
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class StorageSegmentStore:
    """Any Django storage (django-storages' S3Storage for a bucket); a finished save is durable.

    Write-once as far as the storage allows: an existing name is refused, and a storage that
    saved under another name (``file_overwrite=False`` renames instead of replacing) has
    that copy deleted and the write refused. For a bucket, S3 Object Lock (or versioning)
    is what makes it hold against someone with the platform's credentials.
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def folders(self) -> list[str]:
        try:
            directories, _ = self.storage.listdir("")
        except FileNotFoundError:
            return []
        return sorted(directories)

    def names(self, folder: str) -> list[str]:
        try:
            _, files = self.storage.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(f"{folder}/{name}" for name in files)

    def read(self, name: str) -> bytes | None:
        if not self.storage.exists(name):
            return None
        with self.storage.open(name, "rb") as handle:
            return handle.read()

    def write(self, name: str, data: bytes) -> None:
        if self.storage.exists(name):
            raise SegmentExists(name)
        saved = self.storage.save(name, ContentFile(data))
        if saved != name:
            self.storage.delete(saved)
            raise SegmentExists(name)


def segment_store() -> SegmentStore:
    """The configured destination: an S3-compatible bucket when AUDIT_EXPORT_S3_BUCKET is set, else the directory."""
    if not settings.AUDIT_EXPORT_S3_BUCKET:
        return LocalSegmentStore(settings.AUDIT_EXPORT_DIR)
    from storages.backends.s3 import S3Storage

    options: dict[str, Any] = {
        "bucket_name": settings.AUDIT_EXPORT_S3_BUCKET,
        "location": settings.AUDIT_EXPORT_S3_PREFIX,
        "file_overwrite": False,
        "default_acl": None,
    }
    if settings.AUDIT_EXPORT_S3_ENDPOINT_URL:
        options["endpoint_url"] = settings.AUDIT_EXPORT_S3_ENDPOINT_URL
    if settings.AUDIT_EXPORT_S3_REGION:
        options["region_name"] = settings.AUDIT_EXPORT_S3_REGION
    if settings.AUDIT_EXPORT_S3_ACCESS_KEY_ID:
        options["access_key"] = settings.AUDIT_EXPORT_S3_ACCESS_KEY_ID
        options["secret_key"] = settings.AUDIT_EXPORT_S3_SECRET_ACCESS_KEY
    return StorageSegmentStore(S3Storage(**options))
