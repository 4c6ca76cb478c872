#!/usr/bin/env python3
"""Verify an audit export offline: file hash, manifest, and the hash chain inside the file.

Standard library only, so an auditor can run it anywhere with Python 3.11+::

    python verify_audit_export.py audit-events-20260101T000000Z.zip    # admin export (ZIP)
    python verify_audit_export.py segment.jsonl [segment.manifest.json] # one durable segment
    python verify_audit_export.py var/audit-export/                    # every durable segment, chains end to end

Exit status 0 when everything holds, 1 when anything does not (each problem is printed).

The rules (the platform's ``audit.chain``, format 1): an event's ``hash`` is the SHA-256
of the JSON object of its fields chain, seq, prev_hash, created_at, actor, tenant_id,
action, target, outcome, ip and details, serialised with sorted keys, no whitespace and
UTF-8 (not ASCII-escaped). ``prev_hash`` is the previous event's hash in the same chain
(64 zeros before the first); ``seq`` counts the chain from 1 without gaps.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "created_at",
    "actor",
    "tenant_id",
    "action",
    "target",
    "outcome",
    "ip",
    "details",
)


def event_hash(row: dict[str, Any]) -> str:
    document = {name: row[name] for name in HASHED_FIELDS}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def rows_of(data: bytes, file_format: str) -> list[dict[str, Any]]:
    if file_format == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines() if line]
    rows = []
    for cells in csv.DictReader(io.StringIO(data.decode(), newline="")):
        row: dict[str, Any] = dict(cells)
        row["id"], row["seq"] = int(row["id"]), int(row["seq"])
        row["tenant_id"] = int(row["tenant_id"]) if row["tenant_id"] else None
        row["ip"] = row["ip"] or None
        row["details"] = json.loads(row["details"])
        rows.append(row)
    return rows


class Check:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def verify_file(data: bytes, manifest: dict[str, Any], label: str, check: Check) -> list[dict[str, Any]]:
    """Check one data file against its manifest and its own chain links; returns its rows."""
    digest = hashlib.sha256(data).hexdigest()
    check.expect(
        digest == manifest["sha256"], f"{label}: SHA-256 {digest} differs from the manifest's {manifest['sha256']}"
    )
    check.expect(len(data) == manifest["bytes"], f"{label}: {len(data)} bytes, the manifest says {manifest['bytes']}")
    rows = rows_of(data, manifest["format"])
    check.expect(
        len(rows) == manifest["row_count"], f"{label}: {len(rows)} rows, the manifest says {manifest['row_count']}"
    )
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        where = f"{label}: {row['chain']} seq {row['seq']} (id {row['id']})"
        check.expect(event_hash(row) == row["hash"], f"{where}: hash does not match the event's content (altered)")
        before = last.get(row["chain"])
        if before is not None and row["seq"] == before["seq"] + 1:
            check.expect(row["prev_hash"] == before["hash"], f"{where}: prev_hash does not link to seq {before['seq']}")
        elif before is not None:
            contiguous = manifest["chains"].get(row["chain"], {}).get("contiguous", False)
            check.expect(not contiguous, f"{where}: follows seq {before['seq']} although the chain is complete here")
        last[row["chain"]] = row
    for chain, stated in manifest["chains"].items():
        seen = [row for row in rows if row["chain"] == chain]
        check.expect(bool(seen), f"{label}: the manifest lists chain {chain} but the file has none of its events")
        if seen:
            check.expect(
                (seen[0]["seq"], seen[0]["hash"], seen[-1]["seq"], seen[-1]["hash"], len(seen))
                == (
                    stated["first_seq"],
                    stated["first_hash"],
                    stated["last_seq"],
                    stated["last_hash"],
                    stated["events"],
                ),
                f"{label}: chain {chain}'s first/last link or count differs from the manifest",
            )
    if rows:
        check.expect(rows[0]["hash"] == manifest["first_hash"], f"{label}: first hash differs from the manifest")
        check.expect(rows[-1]["hash"] == manifest["last_hash"], f"{label}: last hash differs from the manifest")
        times = sorted(row["created_at"] for row in rows)
        check.expect(
            [times[0], times[-1]] == [manifest["time_range"]["first"], manifest["time_range"]["last"]],
            f"{label}: time range differs from the manifest",
        )
    return rows


def verify_zip(path: Path, check: Check) -> None:
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        verify_file(archive.read(manifest["file"]), manifest, path.name, check)


def verify_segment(data_path: Path, manifest_path: Path, check: Check) -> dict[str, Any]:
    manifest = json.loads(manifest_path.read_bytes())
    rows = verify_file(data_path.read_bytes(), manifest, data_path.name, check)
    if rows:
        check.expect(
            rows[0]["prev_hash"] == manifest.get("previous_hash", rows[0]["prev_hash"]),
            f"{data_path.name}: first event does not link to the manifest's previous_hash",
        )
    return manifest


def verify_directory(root: Path, check: Check) -> int:
    """Every segment, and each chain's segments end to end from its first event."""
    segments = 0
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        expected_seq, expected_prev = 1, GENESIS_HASH
        for data_path in sorted(folder.glob("*.jsonl")):
            manifest_path = data_path.with_name(data_path.name.removesuffix(".jsonl") + ".manifest.json")
            if not manifest_path.exists():
                check.problems.append(f"{data_path.name}: no manifest (an export still in progress, or lost)")
                continue
            manifest = verify_segment(data_path, manifest_path, check)
            chain = manifest["chains"].get(manifest.get("chain", ""), {})
            check.expect(
                (chain.get("first_seq"), chain.get("first_prev_hash")) == (expected_seq, expected_prev),
                f"{data_path.name}: starts at seq {chain.get('first_seq')}, expected {expected_seq} linking to "
                f"{expected_prev[:16]}… (a segment is missing, duplicated or altered)",
            )
            expected_seq, expected_prev = chain.get("last_seq", 0) + 1, chain.get("last_hash", "")
            segments += 1
    return segments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a .zip export, a .jsonl segment, or a directory of segments")
    parser.add_argument("manifest", type=Path, nargs="?", help="the segment's manifest (default: next to it)")
    args = parser.parse_args(argv)
    check = Check()
    path: Path = args.path
    if path.is_dir():
        summary = f"{verify_directory(path, check)} segments"
    elif path.suffix == ".zip":
        verify_zip(path, check)
        summary = path.name
    else:
        manifest = args.manifest or path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json")
        verify_segment(path, manifest, check)
        summary = path.name
    for problem in check.problems:
        print(f"FAIL {problem}")
    if check.problems:
        print(f"{summary}: {len(check.problems)} problem(s)")
        return 1
    print(f"{summary}: OK (file hashes, manifests and hash chain verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
