"""Audit export at scale: 100,000 chained events streamed as a ZIP, peak RSS and throughput.

    .venv/bin/python bench/audit_export.py                       # embedded: a fresh SQLite file
    .venv/bin/python bench/audit_export.py --database postgres://postgres@127.0.0.1:5432/bench

A PostgreSQL database must exist; it is emptied. The events are written through the
chained writer (``audit_append``, in batches), then each measurement runs in a fresh
child process so its peak RSS (``ru_maxrss``) is its own: an idle process (the baseline),
the streamed export of 10k and of all events as JSON Lines and CSV (bytes discarded as a
client would receive them), the same rows materialised in a list (what an export that
does not stream would hold), chain verification, and the durable export to a directory.
Each figure is the median of ``--runs`` children.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(database: str) -> None:
    os.environ.update(DATABASE_URL=database, SECRET_KEY="bench-only", LOG_LEVEL="WARNING")
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llm_platform.settings")
    import django

    django.setup()


def populate(events: int, tenants: int) -> float:
    from django.core.management import call_command

    from audit.models import AuditEvent
    from audit.services import AuditEntry, audit_append

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    started = time.perf_counter()
    batch = 5000
    for offset in range(0, events, batch):
        audit_append(
            [
                AuditEntry(
                    actor=f"user:u{n % 50}",
                    action=("api_key.create", "auth.failure", "quota.refused", "tenant.change")[n % 4],
                    target=f"object:{n}",
                    tenant_id=(n % tenants) + 1 if n % 10 else None,
                    outcome="success" if n % 3 else "denied",
                    ip="10.0.0.1",
                    details={"n": n, "before": {"rpm_limit": 100}, "after": {"rpm_limit": 200}},
                ).to_model()
                for n in range(offset, min(offset + batch, events))
            ]
        )
    elapsed = time.perf_counter() - started
    assert AuditEvent.objects.count() == events
    return elapsed


def child(mode: str, rows: int) -> dict[str, float]:
    from audit.exports import export_archive
    from audit.models import AuditEvent
    from audit.selectors import ROW_FIELDS, audit_chain_names, audit_chain_verify, event_row, event_rows

    queryset = AuditEvent.objects.all()
    if rows:
        top = queryset.order_by("id").values_list("id", flat=True)[rows - 1]
        queryset = queryset.filter(id__lte=top)
    if mode == "durable":
        from audit.models import AuditExportCheckpoint

        AuditExportCheckpoint.objects.all().delete()  # every child exports everything
    started = time.perf_counter()
    produced = 0
    if mode == "idle":
        AuditEvent.objects.exists()
    elif mode in ("stream-jsonl", "stream-csv"):
        for chunk in export_archive(event_rows(queryset), file_format=mode.split("-")[1], base_name="bench"):
            produced += len(chunk)
    elif mode == "materialised":
        held = [event_row(values) for values in queryset.order_by("id").values(*ROW_FIELDS)]
        for chunk in export_archive(iter(held), file_format="jsonl", base_name="bench"):
            produced += len(chunk)
    elif mode == "verify":
        assert all(audit_chain_verify(chain).ok for chain in audit_chain_names())
    elif mode == "durable":
        from audit.durable import audit_export_run
        from audit.segment_store import LocalSegmentStore

        with tempfile.TemporaryDirectory() as directory:
            audit_export_run(store=LocalSegmentStore(directory))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bytes": produced,
    }


def measure(database: str, mode: str, rows: int, runs: int) -> dict[str, float]:
    results = []
    for _ in range(runs):
        output = subprocess.run(
            [sys.executable, __file__, "--database", database, "--child", mode, "--rows", str(rows)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", default="")
    parser.add_argument("--rows", type=int, default=0)
    args = parser.parse_args()
    if not args.database:
        args.database = f"sqlite:///{tempfile.mkdtemp(prefix='audit-bench-')}/bench.sqlite3"
    setup(args.database)
    if args.child:
        print(json.dumps(child(args.child, args.rows)))
        return
    write_s = populate(args.events, args.tenants)
    small = min(10_000, args.events)
    plan = [
        ("idle process (baseline)", "idle", 0),
        (f"stream JSONL zip, {small:,} events", "stream-jsonl", small),
        (f"stream JSONL zip, {args.events:,} events", "stream-jsonl", 0),
        (f"stream CSV zip, {args.events:,} events", "stream-csv", 0),
        (f"materialised list, {args.events:,} events", "materialised", 0),
        (f"verify all chains, {args.events:,} events", "verify", 0),
        (f"durable export to a directory, {args.events:,} events", "durable", 0),
    ]
    vendor = "PostgreSQL" if args.database.startswith("postgres") else "SQLite"
    print(
        f"{vendor}; {args.events:,} events written through the chained writer in {write_s:.1f} s "
        f"({args.events / write_s:,.0f} events/s); median of {args.runs} child processes\n"
    )
    print("| run | time (s) | events/s | peak RSS (MB) | RSS over idle (MB) |")
    print("|---|---:|---:|---:|---:|")
    baseline = None
    for label, mode, rows in plan:
        result = measure(args.database, mode, rows, args.runs)
        count = rows or args.events
        baseline = baseline if baseline is not None else result["maxrss_mb"]
        rate = "" if mode == "idle" else f"{count / result['seconds']:,.0f}"
        print(
            f"| {label} | {result['seconds']:.2f} | {rate} | {result['maxrss_mb']:.0f} | "
            f"{result['maxrss_mb'] - baseline:+.0f} |"
        )


if __name__ == "__main__":
    main()
