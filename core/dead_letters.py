"""Dead letters: rows a batch writer could not write, kept in a private file until an operator replays them.

One JSON Lines file per writer, ``VAR_DIR/dead-letter/<writer>.jsonl``, mode 0600 in a
0700 directory: the service user alone can read it. Each line is one record
(``time``, ``writer``, ``error``, ``attempts``, ``row``); what ``row`` holds is the
writer's codec's business, which leaves out secrets and raw prompts. Lines are
ASCII-escaped JSON, so a row holding text no database takes (NUL, a lone surrogate) is
still written and read back exactly.

Several processes may append at once, and ``manage.py dead_letters replay`` may run
meanwhile: every access holds an exclusive ``flock`` on the file, and a replay first moves
the file aside (``<writer>.jsonl.replaying-<time>-<pid>``), so records that arrive during
a replay go to a fresh file. An appender that opened the file before it was moved sees
that its descriptor no longer names the path and opens the new one. A replay that dies
leaves its aside file behind; the next replay (and ``list``) includes it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

ASIDE_MARK = ".replaying-"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def record_line(record: dict[str, Any]) -> bytes:
    """One record as a line of ASCII JSON (text no database takes survives the round trip)."""
    return (json.dumps(record, ensure_ascii=True, default=_json_default, separators=(",", ":")) + "\n").encode()


class DeadLetterFile:
    """The dead-letter file of one writer (the directory is read from settings at each use)."""

    def __init__(self, writer: str) -> None:
        self.writer = writer

    @property
    def directory(self) -> Path:
        return Path(settings.VAR_DIR) / "dead-letter"

    @property
    def path(self) -> Path:
        return self.directory / f"{self.writer}.jsonl"

    def _directory_ready(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A directory made by an older version (or by hand) may be group- or world-readable.
        os.chmod(self.directory, 0o700)

    def _open_locked(self) -> int:
        """The live file, opened for appending and locked; reopened if a replay moved it meanwhile."""
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = -1
                if current == os.fstat(fd).st_ino:
                    # Files written by an older version were 0644.
                    os.fchmod(fd, 0o600)
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def append(self, lines: list[bytes], *, max_bytes: int) -> int:
        """Append whole lines while the file stays within ``max_bytes``; returns how many were stored."""
        if not lines:
            return 0
        self._directory_ready()
        fd = self._open_locked()
        try:
            size = os.fstat(fd).st_size
            fitting = []
            for line in lines:
                if size + len(line) > max_bytes:
                    break
                fitting.append(line)
                size += len(line)
            data = memoryview(b"".join(fitting))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
            return len(fitting)
        finally:
            os.close(fd)  # releases the lock

    def set_aside(self) -> list[Path]:
        """Move the live file aside for a replay; returns every aside file (with those of a replay that died)."""
        if self.path.exists():
            self._directory_ready()
            fd = self._open_locked()
            try:
                if os.fstat(fd).st_size:
                    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
                    os.rename(self.path, self.path.with_name(f"{self.path.name}{ASIDE_MARK}{stamp}-{os.getpid()}"))
            finally:
                os.close(fd)
        return self.aside_files()

    def aside_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{self.path.name}{ASIDE_MARK}*"))

    def files(self) -> list[Path]:
        """Every file holding this writer's records: those of an unfinished replay first, then the live one."""
        live = [self.path] if self.path.exists() else []
        return [*self.aside_files(), *live]

    @staticmethod
    def records(path: Path) -> Iterator[dict[str, Any]]:
        """The records of one file; a line that does not parse (a torn write) is reported, not fatal."""
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    logger.error("dead letters: %s line %d is not JSON; left in place", path, number)
                    yield {"unreadable": line.decode("ascii", "replace"), "line": number}
                    continue
                yield record if isinstance(record, dict) else {"unreadable": repr(record), "line": number}

    def count(self) -> int:
        return sum(1 for path in self.files() for _ in self.records(path))
