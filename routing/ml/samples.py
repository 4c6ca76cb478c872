"""Routing samples: recorded from the hot path as plain rows, written in batches off it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from core.batch_writer import BatchWriter, Codec
from core.bulk import bulk_insert
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


def _sample_dump(row: SampleRow) -> dict[str, Any]:
    """A sample as a dead letter: the prompt only as its SHA-256 (its text is left out, even where kept)."""
    return {
        "request_id": row.request_id,
        "tenant_id": row.tenant_id,
        "group_id": row.group_id,
        "prompt_sha256": row.prompt_sha256,
        "prompt_chars": row.prompt_chars,
        "created_at": row.created_at.isoformat(),
        "outcome": {
            "group": row.outcome.group,
            "served": row.outcome.served,
            "router": row.outcome.router,
            "record": row.outcome.record,
        },
    }


def _sample_load(document: dict[str, Any]) -> SampleRow:
    from routing.ml.decide import Outcome

    outcome = document["outcome"]
    return SampleRow(
        request_id=document["request_id"],
        tenant_id=document["tenant_id"],
        group_id=document["group_id"],
        prompt_sha256=document["prompt_sha256"],
        prompt_text="",
        prompt_chars=document["prompt_chars"],
        outcome=Outcome(outcome["group"], outcome["served"], outcome["router"], outcome["record"], ()),
        created_at=dt.datetime.fromisoformat(document["created_at"]),
    )


sample_writer = BatchWriter[SampleRow](
    "router-samples",
    _write_samples,
    interval=settings.USAGE_FLUSH_INTERVAL,
    batch_size=settings.USAGE_FLUSH_BATCH,
    codec=Codec(dump=_sample_dump, load=_sample_load),
)


def sample_record(row: SampleRow) -> None:
    sample_writer.add(row)
