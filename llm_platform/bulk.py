"""Bulk inserts for the batch writers: PostgreSQL ``COPY`` where available, ``bulk_create`` elsewhere.

On PostgreSQL, Django's ``bulk_create`` binds every value client-side (psycopg quotes each
one in Python). For the usage log that made the writer thread the largest single cost of a
request under load, and it holds the GIL the event loop needs. ``COPY`` hands the rows to
psycopg's C adapters instead. Conflicting rows are skipped, as ``ignore_conflicts`` does,
by copying into a per-connection staging table first and inserting from it with
``ON CONFLICT DO NOTHING``, so a batch retried after a lost commit acknowledgement never
duplicates or fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models.fields import AutoFieldMixin

# Field classes whose Python values psycopg adapts as they are: skipping Django's per-value
# preparation halves the CPU of a batch. Anything else (JSON, decimals, encrypted or custom
# fields, subclasses) goes through ``get_db_prep_save`` as ``bulk_create`` would.
_PLAIN_FIELDS = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BigIntegerField,
    models.SmallIntegerField,
    models.PositiveIntegerField,
    models.PositiveSmallIntegerField,
    models.PositiveBigIntegerField,
    models.BooleanField,
    models.FloatField,
    models.DateTimeField,
    models.ForeignKey,
)


def _insert_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    return [
        field
        for field in model._meta.concrete_fields
        if not (field.primary_key and isinstance(field, models.AutoField | models.BigAutoField | models.SmallAutoField))
    ]


def _plain(field: models.Field[Any, Any]) -> bool:
    if type(field) not in _PLAIN_FIELDS:
        return False
    if isinstance(field, models.ForeignKey):
        return _plain(field.target_field) or isinstance(field.target_field, AutoFieldMixin)
    return True


def bulk_insert(model: type[models.Model], objs: Sequence[models.Model], *, ignore_conflicts: bool = True) -> None:
    """Insert ``objs`` in one round trip (two statements on PostgreSQL); primary keys are not set."""
    if not objs:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        model._default_manager.using(alias).bulk_create(objs, ignore_conflicts=ignore_conflicts)
        return
    fields = _insert_fields(model)
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    getters = [(field.attname, None if _plain(field) else field.get_db_prep_save) for field in fields]
    rows = (
        tuple(getattr(obj, name) if prep is None else prep(getattr(obj, name), connection) for name, prep in getters)
        for obj in objs
    )
    with (
        transaction.atomic(using=alias, savepoint=False),
        connection.cursor() as cursor,
        connection.wrap_database_errors,  # psycopg's errors become Django's, as for any query
    ):
        raw = cursor.cursor  # psycopg's own cursor: COPY is not part of the DB-API wrapper
        if not ignore_conflicts:
            with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        stage = connection.ops.quote_name(f"stage_{model._meta.db_table}")
        # A temporary table lives as long as the connection (created again after a reconnect);
        # WITH NO DATA copies the columns without their constraints.
        raw.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} AS SELECT {columns} FROM {table} WITH NO DATA")
        with raw.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT DO NOTHING")
        raw.execute(f"DELETE FROM {stage}")
