"""Bulk inserts of the batch writers: every value arrives as bulk_create would store it, conflicts are skipped."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import DataError, IntegrityError, connection, transaction

from core.bulk import bulk_insert
from routing.models import RequestLog

NOW = dt.datetime(2026, 11, 24, 12, 30, 15, 123456, tzinfo=dt.UTC)


def _log(request_id: str, **fields: object) -> RequestLog:
    values: dict[str, object] = {
        "request_id": request_id,
        "created_at": NOW,
        "key_prefix": "llmp_ab12",
        "model_requested": "gpt-4o-mini",
        "model_served": "openai/gpt-4o-mini",
        "status_code": 200,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "total_tokens": 46,
        "cost_usd": Decimal("0.00012345"),
        "latency_ms": 1.25,
        "overhead_ms": 0.125,
        **fields,
    }
    return RequestLog(**values)


@pytest.mark.django_db(transaction=True)
def test_rows_arrive_with_every_value_typed_as_the_model_declares(tenant_factory, key_factory):
    tenant = tenant_factory("acme")
    key = key_factory(tenant).key
    decision = {"strategy": "least-busy", "candidates": [{"id": 1, "score": 0.5}], "note": "ünïcode \u2603"}
    bulk_insert(
        RequestLog,
        [
            _log("r1", tenant_id=tenant.pk, api_key_id=key.pk, route_decision=decision, stream=True),
            _log("r2", ttfb_ms=None, route_decision=None, error_type="rate_limit", status_code=429),
        ],
    )
    first, second = RequestLog.objects.get(request_id="r1"), RequestLog.objects.get(request_id="r2")
    assert (first.tenant_id, first.api_key_id, first.stream) == (tenant.pk, key.pk, True)
    assert first.created_at == NOW
    assert first.cost_usd == Decimal("0.00012345")
    assert first.route_decision == decision
    assert (first.latency_ms, first.overhead_ms, first.total_tokens) == (1.25, 0.125, 46)
    assert second.route_decision is None and second.ttfb_ms is None and second.tenant_id is None
    assert (second.status_code, second.error_type) == (429, "rate_limit")


@pytest.mark.django_db(transaction=True)
def test_a_batch_written_twice_is_stored_once_and_later_batches_do_not_repeat_earlier_ones():
    batch = [_log("a"), _log("b")]
    bulk_insert(RequestLog, batch)
    bulk_insert(RequestLog, [_log("b"), _log("c")])  # "b" again: a retried batch
    with transaction.atomic():  # two batches in one transaction share the staging table
        bulk_insert(RequestLog, [_log("d")])
        bulk_insert(RequestLog, [_log("e")])
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == ["a", "b", "c", "d", "e"]


@pytest.mark.django_db(transaction=True)
def test_without_ignore_conflicts_a_duplicate_fails_the_whole_batch():
    bulk_insert(RequestLog, [_log("a")])
    with pytest.raises(IntegrityError):
        bulk_insert(RequestLog, [_log("z"), _log("a")], ignore_conflicts=False)
    assert list(RequestLog.objects.values_list("request_id", flat=True)) == ["a"]


@pytest.mark.django_db(transaction=True)
def test_a_value_the_column_cannot_hold_is_a_data_error_the_batch_writer_can_isolate():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores any length in a varchar column")
    with pytest.raises(DataError):
        bulk_insert(RequestLog, [_log("x" * 41)])  # request_id is varchar(40)
    assert not RequestLog.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_returning_names_exactly_the_rows_the_insert_added(monkeypatch):
    # A few rows per statement on SQLite, so the answer spans several statements.
    monkeypatch.setattr("core.bulk._sqlite_variables", lambda connection: 50)
    assert bulk_insert(RequestLog, [_log("a"), _log("b")], returning="request_id") == ["a", "b"]
    added = bulk_insert(RequestLog, [_log(n) for n in ("b", "c", "a", "d", "c", "e", "f")], returning="request_id")
    assert sorted(added) == ["c", "d", "e", "f"]  # "c" twice in the batch: added once
    assert bulk_insert(RequestLog, [_log("a"), _log("f")], returning="request_id") == []
    assert bulk_insert(RequestLog, [_log("g")]) == []  # nothing asked, nothing returned
    assert RequestLog.objects.count() == 7
