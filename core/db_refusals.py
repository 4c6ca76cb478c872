"""What a database refuses to store, and whether a failed write is the rows' fault or the database's."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

# SQLSTATE classes that describe the database, not the rows sent to it: connection lost (08),
# read-only after a failover (25), serialization failure or deadlock (40), disk or memory
# full (53), lock not available (55), shut down or cancelled (57), I/O error (58), internal
# (XX); no privilege on the table (42501), a table or column missing (42P01, 42703: a
# migration not applied). Rows that met one of these are kept and tried again, never set
# aside as refused.
_DATABASE_CLASSES = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX"})
_DATABASE_SQLSTATES = frozenset({"42501", "42P01", "42703"})
# SQLite reports the same conditions only in its messages.
_SQLITE_DATABASE_MESSAGES = (
    "locked",
    "busy",
    "disk",
    "full",
    "readonly",
    "read-only",
    "unable to open",
    "no such table",
    "no such column",
    "has no column",
)

# Text neither database stores: NUL (PostgreSQL text and jsonb refuse it) and lone
# surrogates (no UTF-8 encoding; both drivers raise UnicodeEncodeError on them).
_UNWRITABLE = re.compile("[\x00\ud800-\udfff]")


def _unwritable(value: str) -> bool:
    # Most text is ASCII: one C-speed scan decides, and the regex is for the rest.
    return ("\x00" in value) if value.isascii() else _UNWRITABLE.search(value) is not None


def text_writable(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD, so any database stores it."""
    return _UNWRITABLE.sub("\ufffd", value) if _unwritable(value) else value


def _json_unwritable(value: Any) -> bool:
    # Loops rather than any(generator): this runs for every JSON value a batch writer stores.
    if isinstance(value, str):
        return _unwritable(value)
    if isinstance(value, dict):
        for key, item in value.items():
            if (isinstance(key, str) and _unwritable(key)) or _json_unwritable(item):
                return True
        return False
    if isinstance(value, list | tuple):
        for item in value:
            if _json_unwritable(item):
                return True
    return False


def _json_rebuilt(value: Any) -> Any:
    if isinstance(value, str):
        return text_writable(value)
    if isinstance(value, dict):
        return {
            (text_writable(key) if isinstance(key, str) else key): _json_rebuilt(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_json_rebuilt(item) for item in value]
    return value


def json_writable(value: Any) -> Any:
    """A JSON value with every string (keys too) made writable; returned as it is when nothing needs it."""
    return _json_rebuilt(value) if _json_unwritable(value) else value


def database_condition(exc: BaseException) -> bool:
    """Whether ``exc`` says something about the database (down, full, locked, read-only) rather than the rows."""
    seen: BaseException | None = exc
    for _ in range(10):  # the chain of causes, not an unbounded walk
        if seen is None:
            break
        sqlstate = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(sqlstate, str) and (sqlstate in _DATABASE_SQLSTATES or sqlstate[:2] in _DATABASE_CLASSES):
            return True
        if isinstance(seen, sqlite3.OperationalError) and any(
            word in str(seen).lower() for word in _SQLITE_DATABASE_MESSAGES
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def database_reachable(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """One ``SELECT 1`` (reconnecting if the last connection broke): does the database answer?"""
    connection = connections[alias]
    try:
        connection.close_if_unusable_or_obsolete()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        connection.close()
        return False
    return True
