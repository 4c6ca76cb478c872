"""The usage journal's files: creating one locked, adopting a dead process's, reading its rows back."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
ABANDONED_AFTER = 60.0  # seconds: a hidden file still unrenamed this long was left by a dead process


@dataclass(eq=False)
class Segment:
    """One journal file this process holds (locked) until its rows are done."""

    path: Path
    fd: int
    size: int = 0
    outstanding: int = 0  # rows appended and not yet committed or set aside
    sealed: bool = False  # no more appends: deleted as soon as ``outstanding`` is 0
    adopted: bool = False  # a dead process's file: its rows are read and written from it
    recovering: bool = False


@dataclass
class RecoveryResult:
    files: int = 0
    rows: int = 0
    written: int = 0
    refused: int = 0
    unreadable: int = 0
    kept: int = 0  # the database was unavailable: the file stays for the next attempt


def segment_create(directory: Path) -> Segment:
    """A new journal file, locked by this process before any other can see it under its name."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    name = f"{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    hidden = directory / f".{name}.new"
    fd = os.open(hidden, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = directory / name
        os.rename(hidden, path)
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_fd)  # the new name survives a power cut too
        finally:
            os.close(directory_fd)
    except BaseException:
        os.close(fd)
        hidden.unlink(missing_ok=True)
        raise
    return Segment(path, fd)


def segment_adopt(path: Path) -> Segment | None:
    """The file at ``path`` locked by this process if its writer is dead (nobody holds it), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # done by its owner meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # its process is alive
    if os.fstat(fd).st_nlink == 0:  # another process adopted and finished it meanwhile
        os.close(fd)
        return None
    return Segment(path, fd, size=os.fstat(fd).st_size, sealed=True, adopted=True)


def abandoned_remove(path: Path) -> None:
    """A file a process died creating (before it held any row) is deleted once nobody holds it."""
    try:
        if time.time() - path.stat().st_mtime < ABANDONED_AFTER:
            return  # perhaps being created right now, not yet locked
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def rows_read(path: Path, load: Callable[[Any], Any]) -> tuple[list[Any], int]:
    """The rows of a file, and how many lines could not be read (a torn last line: never acknowledged)."""
    rows: list[Any] = []
    unreadable = 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                rows.append(load(json.loads(line)))
            except Exception:
                unreadable += 1
    if unreadable:
        logger.warning("usage journal: %d lines of %s could not be read back", unreadable, path.name)
    return rows, unreadable
