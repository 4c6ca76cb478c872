"""``manage.py dead_letters list|replay [--writer NAME]``: see and write again the rows a batch writer set aside."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Protocol

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from core.batch_writer import ReplayResult
from core.dead_letters import DeadLetterFile


class DeadLetterWriter(Protocol):
    name: str
    dead_letters: DeadLetterFile

    def replay(self) -> ReplayResult: ...


def batch_writers() -> dict[str, DeadLetterWriter]:
    """Every writer of ``settings.BATCH_WRITERS``, by name."""
    writers = [import_string(path) for path in settings.BATCH_WRITERS]
    return {writer.name: writer for writer in writers}


class Command(BaseCommand):
    help = (
        "List the dead letters of the batch writers (rows the database refused), or replay them through the "
        "same write function; rows that still fail stay. Exit status 1 when a replay leaves dead letters."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "replay"])
        parser.add_argument("--writer", action="append", help="Only this writer (repeatable); default: all")
        parser.add_argument("--json", action="store_true", help="list: print the records themselves, one per line")

    def handle(self, *args: Any, **options: Any) -> None:
        writers = batch_writers()
        chosen = options["writer"] or sorted(writers)
        unknown = sorted(set(chosen) - set(writers))
        if unknown:
            raise CommandError(f"No writer named {', '.join(unknown)}; the writers are {', '.join(sorted(writers))}.")
        if options["action"] == "list":
            for name in chosen:
                self._list(writers[name], as_json=options["json"])
            return
        left = 0
        for name in chosen:
            result = writers[name].replay()
            left += result.refused + result.kept
            self.stdout.write(
                f"{name}: {result.records} dead letters: {result.written} written, {result.refused} refused again, "
                f"{result.kept} kept (database unavailable or unreadable), {result.expired} expired"
            )
        if left:
            raise CommandError(f"{left} dead letters remain; see 'manage.py dead_letters list'.", returncode=1)

    def _list(self, writer: DeadLetterWriter, *, as_json: bool) -> None:
        files = writer.dead_letters.files()
        records = [record for path in files for record in writer.dead_letters.records(path)]
        if as_json:
            for record in records:
                self.stdout.write(json.dumps(record, ensure_ascii=True, sort_keys=True))
            return
        if not records:
            self.stdout.write(f"{writer.name}: no dead letters")
            return
        times = sorted(str(record.get("time", "")) for record in records)
        self.stdout.write(
            f"{writer.name}: {len(records)} dead letters from {times[0]} to {times[-1]} "
            f"in {', '.join(str(path) for path in files)}"
        )
        errors = Counter(str(record.get("error") or "unreadable line").split(":", 1)[0] for record in records)
        for error, count in errors.most_common():
            self.stdout.write(f"  {count}: {error}")
