"""Fixtures for the audit tests: tampering with the guard lifted, the offline verifier, PostgreSQL only."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
from django.db import connection

from audit.guard import guard_install, guard_remove

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "verify_audit_export.py"


@contextmanager
def guard_lifted() -> Iterator[None]:
    """What a DBA with table-owner rights can do: switch the guard's triggers off, then on again."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
            cursor.execute("ALTER TABLE audit_auditchainhead DISABLE TRIGGER USER")
        else:
            guard_remove(cursor, connection.vendor)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            guard_install(cursor, connection.vendor)


@pytest.fixture
def tamper() -> Callable[[str, list[object]], None]:
    """Run raw SQL against the audit table behind the application's back."""

    def run(sql: str, params: list[object]) -> None:
        with guard_lifted(), connection.cursor() as cursor:
            cursor.execute(sql, params)

    return run


@pytest.fixture(scope="session")
def verifier() -> ModuleType:
    """The auditor's offline script, loaded from its file as an auditor would run it."""
    spec = importlib.util.spec_from_file_location("verify_audit_export", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def postgres_only(transactional_db: None) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL): concurrent writers with row locks")


@pytest.fixture(autouse=True)
def export_store_of_its_own(settings, tmp_path: Path) -> None:
    """audit_verify compares with the export store: never with one left by another test or a local run."""
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit-export"
