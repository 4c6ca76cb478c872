"""Usage records: built on the hot path as plain rows, priced and written in batches off it."""

from __future__ import annotations

import asyncio
import atexit
import bisect
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import F

from core.batch_writer import BatchWriter, Codec, WriteOutcome
from core.bulk import bulk_insert
from routing.models import LATENCY_BUCKETS_MS, ModelDeployment, RequestLog, UsageRollup
from routing.pricing import usage_cost
from routing.usage_journal import UsageJournal
from tenants.models import ApiKey, Tenant

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRow:
    request_id: str
    created_at: dt.datetime
    tenant_id: int | None
    api_key_id: int | None
    key_prefix: str
    endpoint: str
    model_requested: str
    deployment_id: int | None
    model_served: str
    stream: bool
    status_code: int
    error_type: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    usage_estimated: bool
    latency_ms: float
    ttfb_ms: float | None
    overhead_ms: float
    client_disconnected: bool
    cut_after_bytes: int | None = None
    cost_overrides: dict[str, Any] | None = None
    route_decision: dict[str, Any] | None = None
    prompt: Any = None  # kept only as a hash in the decision record, computed by the writer


def _decision(row: UsageRow) -> dict[str, Any] | None:
    """The routing decision as stored: the prompt is reduced to its SHA-256, never kept."""
    if row.route_decision is None:
        return None
    decision = dict(row.route_decision)
    if row.prompt is not None:
        decision["prompt_sha256"] = prompt_sha256(row.prompt)
    return decision


def prompt_sha256(prompt: Any) -> str:
    """SHA-256 of the prompt's canonical JSON; defined for any text (a lone surrogate too, encoded as is)."""
    text = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _existing(model: type[models.Model], ids: set[int | None]) -> set[int]:
    wanted = {pk for pk in ids if pk is not None}
    return set(model._default_manager.filter(pk__in=wanted).values_list("pk", flat=True)) if wanted else set()


def _write_usage(rows: list[UsageRow]) -> None:
    # A key, tenant or deployment may be deleted while its requests are in flight: keep
    # the record and drop the dangling reference rather than fail the whole batch.
    tenants = _existing(Tenant, {row.tenant_id for row in rows})
    keys = _existing(ApiKey, {row.api_key_id for row in rows})
    deployments = _existing(ModelDeployment, {row.deployment_id for row in rows})
    logs = [
        RequestLog(
            request_id=row.request_id,
            created_at=row.created_at,
            tenant_id=row.tenant_id if row.tenant_id in tenants else None,
            api_key_id=row.api_key_id if row.api_key_id in keys else None,
            key_prefix=row.key_prefix,
            endpoint=row.endpoint,
            model_requested=row.model_requested[:200],
            deployment_id=row.deployment_id if row.deployment_id in deployments else None,
            model_served=row.model_served,
            stream=row.stream,
            status_code=row.status_code,
            error_type=row.error_type[:60],
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens,
            usage_estimated=row.usage_estimated,
            cost_usd=usage_cost(row.model_served, row.prompt_tokens, row.completion_tokens, row.cost_overrides),
            latency_ms=round(row.latency_ms, 3),
            ttfb_ms=None if row.ttfb_ms is None else round(row.ttfb_ms, 3),
            overhead_ms=round(row.overhead_ms, 3),
            client_disconnected=row.client_disconnected,
            cut_after_bytes=row.cut_after_bytes,
            route_decision=_decision(row),
        )
        for row in rows
    ]
    last_used: dict[int, dt.datetime] = {}
    for row in rows:
        if row.api_key_id in keys:
            last_used[row.api_key_id] = max(row.created_at, last_used.get(row.api_key_id, row.created_at))
    with transaction.atomic():
        # bulk_insert makes the logs' text writable (NUL, lone surrogates) in place, so the
        # rollups below group by the same model names the logs hold.
        inserted = bulk_insert(RequestLog, logs, returning="request_id")
        for key_id, when in last_used.items():
            ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gt=when).update(last_used_at=when)
        # Only the rows this insert added, in the same transaction: a batch retried after a
        # lost commit acknowledgement, a replayed dead letter or journal, or one request twice
        # in a batch adds to the rollups once.
        _rollups_add(_added(logs, inserted))


def _added(logs: list[RequestLog], inserted: list[str]) -> list[RequestLog]:
    """The logs an insert added, given the request ids it returned (each id once: the first log that holds it)."""
    remaining = set(inserted)
    added = []
    for log in logs:
        if log.request_id in remaining:
            remaining.remove(log.request_id)
            added.append(log)
    return added


def _latency_bucket(latency_ms: float) -> int:
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def _rollups_add(logs: list[RequestLog]) -> None:
    """Add a batch to the hourly rollups (one UPDATE per bucket; INSERT when it is new)."""
    groups: dict[tuple[dt.datetime, int, int | None, str], dict[str, Any]] = {}
    for log in logs:
        if log.tenant_id is None:
            continue
        hour = log.created_at.replace(minute=0, second=0, microsecond=0)
        totals = groups.setdefault(
            (hour, log.tenant_id, log.api_key_id, log.model_requested),
            {
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": Decimal(0),
                "latency_ms_sum": 0.0,
            },
        )
        totals["requests"] += 1
        totals["errors"] += log.status_code >= 400
        totals["prompt_tokens"] += log.prompt_tokens
        totals["completion_tokens"] += log.completion_tokens
        totals["cost_usd"] += log.cost_usd
        totals["latency_ms_sum"] += log.latency_ms
        histogram_field = f"latency_h{_latency_bucket(log.latency_ms)}"
        totals[histogram_field] = totals.get(histogram_field, 0) + 1
    for (hour, tenant_id, key_id, model), totals in groups.items():
        bucket = UsageRollup.objects.filter(hour=hour, tenant_id=tenant_id, api_key_id=key_id, model=model)
        increments = {name: F(name) + value for name, value in totals.items()}
        if bucket.update(**increments):
            continue
        try:
            with transaction.atomic():
                UsageRollup.objects.create(hour=hour, tenant_id=tenant_id, api_key_id=key_id, model=model, **totals)
        except IntegrityError:  # another process created the bucket first
            bucket.update(**increments)


# The only deployment parameters a usage row needs (for its price): the deployment's other
# litellm_params may hold provider credentials and never go into a dead letter.
PRICE_PARAMS = ("input_cost_per_token", "output_cost_per_token")


def _usage_dump(row: UsageRow) -> dict[str, Any]:
    """A usage row as a dead letter: the prompt only as its SHA-256 (in the decision), no credentials."""
    document = {
        item.name: getattr(row, item.name)
        for item in dataclasses.fields(UsageRow)
        if item.name not in ("prompt", "cost_overrides", "route_decision")
    }
    document["created_at"] = row.created_at.isoformat()
    overrides = row.cost_overrides or {}
    document["cost_overrides"] = {name: overrides[name] for name in PRICE_PARAMS if name in overrides} or None
    document["route_decision"] = _decision(row)
    return document


def _usage_load(document: dict[str, Any]) -> UsageRow:
    names = {item.name for item in dataclasses.fields(UsageRow)}
    values = {name: value for name, value in document.items() if name in names}
    values["created_at"] = dt.datetime.fromisoformat(document["created_at"])
    # A dead letter of an older version may hold the raw prompt: it is hashed when written.
    return UsageRow(**values)


class UsageWriter(BatchWriter[UsageRow]):
    """The usage batch writer; with a journal, the rows it has committed or set aside end their journal entries."""

    journal: UsageJournal[UsageRow] | None = None

    def write_isolating(self, rows: list[UsageRow]) -> WriteOutcome[UsageRow]:
        outcome = super().write_isolating(rows)
        if self.journal is not None:
            self.journal.settled(_done(rows, outcome.unwritten))
        return outcome


def _done(rows: list[UsageRow], unwritten: list[UsageRow]) -> Iterable[UsageRow]:
    if not unwritten:
        return rows
    kept = {id(row) for row in unwritten}
    return (row for row in rows if id(row) not in kept)


usage_writer = UsageWriter(
    "usage",
    _write_usage,
    interval=settings.USAGE_FLUSH_INTERVAL,
    batch_size=settings.USAGE_FLUSH_BATCH,
    codec=Codec(dump=_usage_dump, load=_usage_load),
)


def usage_journal_open(directory: Path, writer: UsageWriter) -> UsageJournal[UsageRow]:
    """A journal for ``writer``'s rows in ``directory``, started: it first replays what dead processes left there."""
    journal = UsageJournal[UsageRow](directory, writer, key=lambda row: row.request_id)
    writer.journal = journal
    journal.start()
    atexit.register(journal.stop)
    return journal


# USAGE_DURABILITY=journal: opened when the process loads the usage writer (a server does as it
# starts), so the journals of processes that died on this host are written at once.
usage_journal: UsageJournal[UsageRow] | None = (
    usage_journal_open(Path(settings.VAR_DIR) / "usage-journal", usage_writer)
    if settings.USAGE_DURABILITY == "journal"
    else None
)


def usage_record(row: UsageRow) -> None:
    usage_writer.add(row)


def usage_journaled() -> bool:
    """Whether answered requests await ``usage_record_durable`` before their last bytes (USAGE_DURABILITY)."""
    return usage_journal is not None


_journal_complaint = 0.0


async def usage_record_durable(row: UsageRow) -> bool:
    """Under USAGE_DURABILITY=journal, return once ``row`` is on local disk; the caller then sends its last bytes.

    ``row`` may be provisional (the request's final row goes through ``usage_record`` as
    usual): it is what a restart writes if the process dies before the final row is
    committed. A disk that fails or takes longer than USAGE_JOURNAL_TIMEOUT degrades the
    request to the batch writer's guarantee (logged, at most once a minute); False then.
    """
    global _journal_complaint
    journal = usage_journal
    if journal is None:
        return True
    try:
        async with asyncio.timeout(settings.USAGE_JOURNAL_TIMEOUT):
            await journal.append(row)
    except Exception as exc:  # whatever the journal meets, the answer goes out
        now = time.monotonic()
        if now - _journal_complaint >= 60:
            _journal_complaint = now
            logger.error(
                "usage journal: a row was not made durable in time (%s); answered anyway, as under batch durability",
                f"{type(exc).__name__}: {exc}",
            )
        return False
    return True
