"""The hash chain's canonical form: which fields are hashed, how, and how a link is checked.

Pure Python on purpose (no Django): the offline verifier applies the same rules to an
export file, and the format here is the contract an auditor relies on. Changing it
breaks every chain already written, so it carries a version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

CHAIN_FORMAT = 1
GENESIS_HASH = "0" * 64
PLATFORM_CHAIN = "platform"

# The fields of an event that its hash covers, in the export's column order.
HASHED_FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "created_at",
    "actor",
    "tenant_id",
    "action",
    "target",
    "outcome",
    "ip",
    "details",
)


def chain_for(tenant_id: int | None) -> str:
    """One chain per tenant, plus the platform chain for events that belong to no tenant."""
    return PLATFORM_CHAIN if tenant_id is None else f"tenant:{int(tenant_id)}"


def timestamp(value: dt.datetime) -> str:
    """UTC, microsecond precision, always the same spelling (the database keeps microseconds)."""
    if value.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The canonical JSON of an event: hashed fields only, sorted keys, no whitespace, UTF-8."""
    document = {name: fields[name] for name in HASHED_FIELDS}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def event_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON; ``fields['created_at']`` is the ``timestamp()`` string."""
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def link_error(fields: Mapping[str, Any], *, expected_seq: int, expected_prev: str) -> str | None:
    """Why this event does not continue the chain at ``expected_seq`` after ``expected_prev``; None if it does."""
    if fields["seq"] != expected_seq:
        return f"sequence {fields['seq']} where {expected_seq} was expected (an event is missing or was inserted)"
    if fields["prev_hash"] != expected_prev:
        return "prev_hash does not match the previous event's hash (an event before it was altered or removed)"
    recomputed = event_hash(fields)
    if fields["hash"] != recomputed:
        return f"stored hash {fields['hash'][:16]}… differs from the recomputed {recomputed[:16]}… (event altered)"
    return None
