"""Bulk inserts skip duplicates only: a row any other constraint refuses fails the insert, on every database."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError

from core.bulk import bulk_insert
from routing.models import RequestLog

NOW = dt.datetime(2026, 11, 24, 12, 30, 15, tzinfo=dt.UTC)


def _log(request_id: str, **fields: object) -> RequestLog:
    return RequestLog(request_id=request_id, created_at=NOW, status_code=200, **fields)


@pytest.mark.django_db(transaction=True)
def test_a_row_breaking_a_check_constraint_is_refused_not_silently_skipped():
    with pytest.raises(IntegrityError):
        bulk_insert(RequestLog, [_log("ok"), _log("negative", prompt_tokens=-1)])
    assert not RequestLog.objects.exists()
    bulk_insert(RequestLog, [_log("ok"), _log("ok"), _log("other")])  # duplicates still skipped
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == ["ok", "other"]


@pytest.mark.django_db(transaction=True)
def test_text_no_database_stores_is_replaced_and_cut_to_its_column_but_never_in_a_unique_one():
    bulk_insert(RequestLog, [_log("r\x001", model_requested="m\x00\ud800" + "x" * 300, key_prefix="p" * 40)])
    stored = RequestLog.objects.get()
    assert stored.request_id == "r\ufffd1"
    assert stored.model_requested == ("m\ufffd\ufffd" + "x" * 300)[:200]
    assert stored.key_prefix == "p" * 16
