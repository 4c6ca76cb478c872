"""Bulk inserts for the batch writers: PostgreSQL ``COPY`` where available, ``bulk_create`` elsewhere.

On PostgreSQL, Django's ``bulk_create`` binds every value client-side (psycopg quotes each
one in Python). For the usage log that made the writer thread the largest single cost of a
request under load, and it holds the GIL the event loop needs. ``COPY`` hands the rows to
psycopg's C adapters instead. Conflicting rows are skipped, as ``ignore_conflicts`` does,
by copying into a per-connection staging table first and inserting from it with
``ON CONFLICT DO NOTHING``, so a batch retried after a lost commit acknowledgement never
duplicates or fails. Asked for a ``returning`` column, the insert says which rows it
actually added (``RETURNING``), so whatever is derived from them (the usage rollups) counts
a row written twice only once.

Before either, text the database would refuse is made writable: NUL and lone surrogates
become U+FFFD (in JSON values too), and text longer than its column is cut, except in a
unique column, where a cut could make two rows collide and one be skipped as a conflict
(such a row is refused and the batch writer sets it aside).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models.fields import AutoFieldMixin

from core.db_refusals import json_writable, text_writable

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


def _cleaner(field: models.Field[Any, Any]) -> Callable[[Any], Any] | None:
    if isinstance(field, models.JSONField):
        return json_writable
    if isinstance(field, models.CharField | models.TextField):
        limit = None if field.unique or field.primary_key else field.max_length

        def clean(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            value = text_writable(value)
            return value[:limit] if limit is not None else value

        return clean
    return None


def _objs_writable(fields: list[models.Field[Any, Any]], objs: Sequence[models.Model]) -> None:
    cleaners = [(field.attname, cleaner) for field in fields if (cleaner := _cleaner(field)) is not None]
    for obj in objs:
        for name, cleaner in cleaners:
            value = getattr(obj, name)
            if value is not None:
                setattr(obj, name, cleaner(value))


def _sqlite_variables(connection: Any) -> int:
    """How many ``?`` one SQLite statement may hold (Django assumes 999; SQLite 3.32+ allows 32766)."""
    import sqlite3

    try:
        return int(connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (AttributeError, sqlite3.Error):
        return connection.features.max_query_params or 999


def _column(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise ValueError(f"{model.__name__}.{name} is not a column")
    return field


def bulk_insert(
    model: type[models.Model],
    objs: Sequence[models.Model],
    *,
    ignore_conflicts: bool = True,
    returning: str | None = None,
) -> list[Any]:
    """Insert ``objs`` in one round trip (two statements on PostgreSQL); primary keys are not set.

    With ``ignore_conflicts`` a row that duplicates a unique value is skipped; any other
    constraint a row breaks fails the insert, on every database. With ``returning`` (a column
    name), returns that column's value for every row the insert added, and for no row it
    skipped; otherwise an empty list.
    """
    if not objs:
        return []
    alias = router.db_for_write(model)
    connection = connections[alias]
    fields = _insert_fields(model)
    _objs_writable(fields, objs)
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    returned, attname = "", ""
    if returning:
        field = _column(model, returning)
        returned, attname = f" RETURNING {connection.ops.quote_name(str(field.column))}", field.attname
    if connection.vendor == "sqlite" and ignore_conflicts:
        # Django's ignore_conflicts is INSERT OR IGNORE on SQLite, which also skips rows that
        # break a CHECK or NOT NULL constraint: a refused row would vanish without a trace.
        # ON CONFLICT DO NOTHING skips duplicates only, as on PostgreSQL. Multi-row VALUES
        # rather than executemany, whose statements cannot return rows.
        values = [
            tuple(field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields) for obj in objs
        ]
        placeholders = f"({', '.join(['%s'] * len(fields))})"
        per_statement = max(1, _sqlite_variables(connection) // len(fields))
        inserted: list[Any] = []
        with transaction.atomic(using=alias, savepoint=False), connection.cursor() as cursor:
            for start in range(0, len(values), per_statement):
                chunk = values[start : start + per_statement]
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholders] * len(chunk))}"
                    f" ON CONFLICT DO NOTHING{returned}",
                    [value for row in chunk for value in row],
                )
                if returning:
                    inserted += [row[0] for row in cursor.fetchall()]
        return inserted
    if connection.vendor != "postgresql":
        # Neither database the platform runs on comes here; without RETURNING, what existed
        # before the insert tells what it added (exact while no other writer races it).
        before: set[Any] = set()
        if returning:
            values_of = {getattr(obj, attname) for obj in objs}
            before = set(
                model._default_manager.using(alias)
                .filter(**{f"{returning}__in": values_of})
                .values_list(returning, flat=True)
            )
        model._default_manager.using(alias).bulk_create(objs, ignore_conflicts=ignore_conflicts)
        if not returning:
            return []
        return list(dict.fromkeys(value for obj in objs if (value := getattr(obj, attname)) not in before))
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
            # All or nothing: every row was added.
            return [getattr(obj, attname) for obj in objs] if returning else []
        stage = connection.ops.quote_name(f"stage_{model._meta.db_table}")
        # A temporary table lives as long as the connection (created again after a reconnect);
        # WITH NO DATA copies the columns without their constraints.
        raw.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} AS SELECT {columns} FROM {table} WITH NO DATA")
        with raw.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT DO NOTHING{returned}")
        inserted = [row[0] for row in raw.fetchall()] if returning else []
        raw.execute(f"DELETE FROM {stage}")
        return inserted
