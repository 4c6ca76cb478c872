"""Routing samples: recorded from the hot path as plain rows, written in batches off it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from audit.writer import BatchWriter
from llm_platform.bulk import bulk_insert
from routing.ml.models import RouterSample, SmartGroup
from tenants.models import Tenant

if TYPE_CHECKING:
    from routing.ml.decide import Outcome


@dataclass(slots=True)
class SampleRow:
    request_id: str
    tenant_id: int | None
    group_id: int
    prompt_sha256: str
    prompt_text: str
    prompt_chars: int
    outcome: Outcome
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def _write_samples(rows: list[SampleRow]) -> None:
    tenants = set(Tenant.objects.filter(pk__in={r.tenant_id for r in rows}).values_list("pk", flat=True))
    groups = set(SmartGroup.objects.filter(pk__in={r.group_id for r in rows}).values_list("pk", flat=True))
    samples = []
    for row in rows:
        record: dict[str, Any] = row.outcome.record
        samples.append(
            RouterSample(
                request_id=row.request_id,
                created_at=row.created_at,
                tenant_id=row.tenant_id if row.tenant_id in tenants else None,
                group_id=row.group_id if row.group_id in groups else None,
                prompt_sha256=row.prompt_sha256,
                prompt_text=row.prompt_text,
                prompt_chars=row.prompt_chars,
                router=row.outcome.router[:60],
                arm=record.get("arm") or "",
                shadow=bool(record.get("shadow_mode")),
                score=record["candidates"][0]["predicted_win_rate"],
                threshold=record.get("threshold"),
                chosen_model=record["chosen"][:200],
                served_model=row.outcome.served[:200],
                record=record,
            )
        )
    bulk_insert(RouterSample, samples)


sample_writer = BatchWriter[SampleRow](
    "router-samples", _write_samples, interval=settings.USAGE_FLUSH_INTERVAL, batch_size=settings.USAGE_FLUSH_BATCH
)


def sample_record(row: SampleRow) -> None:
    sample_writer.add(row)
