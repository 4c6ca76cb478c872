"""Export files of the audit record: CSV or JSON Lines, each with a manifest that proves it.

An export is streamed as a ZIP archive holding the data file and ``manifest.json``; the
manifest is written after the last row, so it can carry the SHA-256 of the data file
without the file ever being held in memory. The manifest also records the row count,
time range, first and last hash, and each chain's first and last link, which is what
``scripts/verify_audit_export.py`` checks offline.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

from django.utils import timezone

from audit.chain import CHAIN_FORMAT, HASHED_FIELDS, timestamp
from audit.selectors import ROW_FIELDS

FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
CSV_COLUMNS = ROW_FIELDS


def jsonl_line(row: dict[str, Any]) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class _CsvEncoder:
    """One CSV row at a time; None is an empty cell and ``details`` a compact JSON cell."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def header(self) -> bytes:
        return self._encode(list(CSV_COLUMNS))

    def row(self, row: dict[str, Any]) -> bytes:
        cells = []
        for name in CSV_COLUMNS:
            value = row[name]
            if name == "details":
                value = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            cells.append("" if value is None else value)
        return self._encode(cells)

    def _encode(self, cells: list[Any]) -> bytes:
        self._writer.writerow(cells)
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()


class Manifest:
    """Accumulates what a manifest states about an export while its rows go by."""

    def __init__(self, *, file_name: str, file_format: str, filters: dict[str, Any] | None = None) -> None:
        self.file_name = file_name
        self.file_format = file_format
        self.filters = filters or {}
        self.digest = hashlib.sha256()
        self.size = 0
        self.rows = 0
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.earliest: str | None = None
        self.latest: str | None = None
        self.chains: dict[str, dict[str, Any]] = {}

    def add_bytes(self, data: bytes) -> bytes:
        self.digest.update(data)
        self.size += len(data)
        return data

    def add_row(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.first = self.first or row
        self.last = row
        created = row["created_at"]
        self.earliest = created if self.earliest is None or created < self.earliest else self.earliest
        self.latest = created if self.latest is None or created > self.latest else self.latest
        chain = self.chains.get(row["chain"])
        if chain is None:
            self.chains[row["chain"]] = {
                "events": 1,
                "first_seq": row["seq"],
                "first_prev_hash": row["prev_hash"],
                "first_hash": row["hash"],
                "last_seq": row["seq"],
                "last_hash": row["hash"],
                "contiguous": True,
            }
            return
        chain["events"] += 1
        if row["seq"] != chain["last_seq"] + 1:
            chain["contiguous"] = False
        chain["last_seq"], chain["last_hash"] = row["seq"], row["hash"]

    def document(self, **extra: Any) -> dict[str, Any]:
        return {
            "manifest_version": 1,
            "chain_format": CHAIN_FORMAT,
            "hashed_fields": list(HASHED_FIELDS),
            "file": self.file_name,
            "format": self.file_format,
            "sha256": self.digest.hexdigest(),
            "bytes": self.size,
            "row_count": self.rows,
            "time_range": {"first": self.earliest, "last": self.latest},
            "first_hash": self.first["hash"] if self.first else None,
            "last_hash": self.last["hash"] if self.last else None,
            "chains": self.chains,
            "filters": self.filters,
            "generated_at": timestamp(timezone.now()),
            **extra,
        }


def encode_rows(rows: Iterable[dict[str, Any]], file_format: str, manifest: Manifest) -> Iterator[bytes]:
    """The data file's bytes, row by row, counted into ``manifest``."""
    if file_format == "csv":
        encoder = _CsvEncoder()
        yield manifest.add_bytes(encoder.header())
        for row in rows:
            manifest.add_row(row)
            yield manifest.add_bytes(encoder.row(row))
    elif file_format == "jsonl":
        for row in rows:
            manifest.add_row(row)
            yield manifest.add_bytes(jsonl_line(row))
    else:
        raise ValueError(f"unknown export format {file_format!r}; use csv or jsonl")


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink: ZipFile writes into it, the stream drains it."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.pending += len(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self.pending = [], 0
        return data


def export_archive(
    rows: Iterable[dict[str, Any]],
    *,
    file_format: str,
    base_name: str,
    filters: dict[str, Any] | None = None,
    flush_bytes: int = 256 * 1024,
    **manifest_extra: Any,
) -> Iterator[bytes]:
    """Stream a ZIP of ``<base_name>.<format>`` and ``manifest.json``, in chunks of about ``flush_bytes``."""
    data_name = f"{base_name}.{file_format}"
    manifest = Manifest(file_name=data_name, file_format=file_format, filters=filters)
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(data_name, date_time=timezone.now().utctimetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as data_file:
            for chunk in encode_rows(rows, file_format, manifest):
                data_file.write(chunk)
                if pipe.pending >= flush_bytes:
                    yield pipe.drain()
        document = manifest.document(**manifest_extra)
        archive.writestr("manifest.json", json.dumps(document, indent=2, sort_keys=True) + "\n")
    yield pipe.drain()


def export_base_name(now: dt.datetime | None = None) -> str:
    return f"audit-events-{(now or timezone.now()).astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"
