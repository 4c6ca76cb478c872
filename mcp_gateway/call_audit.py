"""The context an MCP request runs in, and the audit of its calls (tools, prompts, resources) whatever their outcome."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from audit.models import AuditEvent
from audit.services import AuditEntry, audit_denial_record, audit_record_deferred
from core.errors import PlatformError
from mcp_gateway.handshake import MODERN_VERSIONS
from mcp_gateway.jsonrpc import INVALID_PARAMS, RpcError
from tenants.auth import KeyContext

# Audit outcomes as the tool call metric's small fixed label set.
TOOL_CALL_OUTCOMES: dict[str, str] = {
    AuditEvent.Outcome.SUCCESS: "ok",
    AuditEvent.Outcome.FAILURE: "error",
    AuditEvent.Outcome.DENIED: "denied",
}


@dataclass(frozen=True, slots=True)
class CallContext:
    key: KeyContext
    version: str
    bundle: str
    ip: str | None
    session_id: str
    transport: str
    # Where a tools/call relays its upstream's progress (set when the client asked for it and can hear it).
    progress: Any = None

    @property
    def modern(self) -> bool:
        return self.version in MODERN_VERSIONS


def arguments_encode(arguments: dict[str, Any]) -> bytes:
    """The canonical JSON of a call's arguments (what its audit hash is of); refused when JSON has no form for it."""
    try:
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return canonical.encode()
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: 'arguments' cannot be sent as JSON ({type(exc).__name__}: {str(exc)[:200]}).",
            data={"type": "invalid_request_error", "code": "invalid_arguments"},
        ) from None


def arguments_hash_lenient(arguments: dict[str, Any]) -> str:
    """For the audit of a call whose arguments could not be encoded: a hash all the same, never an error."""
    try:
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        canonical = repr(arguments)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def call_outcome(exc: BaseException, outcome: str, error: str) -> tuple[str, str]:
    """The audited outcome and error of a call that raised ``exc`` (a refusal already decided stays)."""
    if isinstance(exc, RpcError):
        if outcome != AuditEvent.Outcome.SUCCESS:
            return outcome, error
        return AuditEvent.Outcome.FAILURE, f"rpc_error:{exc.code}"
    if isinstance(exc, PlatformError):  # e.g. the quota store unreachable with QUOTA_FAIL_MODE=closed
        return AuditEvent.Outcome.FAILURE, exc.code or "platform_error"
    return AuditEvent.Outcome.FAILURE, "cancelled_or_crashed"


def call_audit(
    ctx: CallContext, action: str, target: str, outcome: str, error: str, seconds: float, extra: dict[str, Any]
) -> None:
    """The audit event of a call: the same details for a name that does not exist and one not granted."""
    details: dict[str, Any] = {
        "key_prefix": ctx.key.prefix,
        **extra,
        "duration_ms": round(seconds * 1000, 3),
        "transport": ctx.transport,
        "protocol_version": ctx.version,
    }
    if ctx.session_id:
        details["session"] = ctx.session_id[:8]
    if ctx.bundle:
        details["virtual_server"] = ctx.bundle
    if error:
        details["error"] = error
    # Refusals (probing names, a quota hammered) are counted per interval, not written one by one.
    record = audit_denial_record if outcome == AuditEvent.Outcome.DENIED else audit_record_deferred
    record(
        AuditEntry(
            actor=f"key:{ctx.key.prefix}",
            action=action,
            target=target,
            tenant_id=ctx.key.tenant_id,
            outcome=outcome,
            ip=ctx.ip,
            details=details,
        )
    )


@dataclass
class AuditedCall:
    """One call, audited when its ``with`` block ends, however it ends (a cancellation too).

    The block marks a refusal or a failure it decides itself (``refuse``, ``fail``); an
    exception that leaves the block decides the rest (see :func:`call_outcome`).
    """

    ctx: CallContext
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)
    outcome: str = AuditEvent.Outcome.SUCCESS
    error: str = ""
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def refuse(self, error: str) -> None:
        self.outcome, self.error = AuditEvent.Outcome.DENIED, error

    def fail(self, error: str) -> None:
        self.outcome, self.error = AuditEvent.Outcome.FAILURE, error

    def __enter__(self) -> AuditedCall:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is not None:
            self.outcome, self.error = call_outcome(exc, self.outcome, self.error)
        self.seconds = time.perf_counter() - self.started
        call_audit(self.ctx, self.action, self.target, self.outcome, self.error, self.seconds, self.details)
