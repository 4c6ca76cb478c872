"""The MCP methods a request may call: dispatch by method, grant and quota checks, the upstream relay."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.shared.exceptions import MCPError

from core.errors import PlatformError
from mcp_gateway import ssrf
from mcp_gateway.call_audit import (
    TOOL_CALL_OUTCOMES,
    AuditedCall,
    CallContext,
    arguments_encode,
    arguments_hash_lenient,
)
from mcp_gateway.handshake import discover_result
from mcp_gateway.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    RATE_LIMITED,
    UPSTREAM_ERROR,
    Message,
    RpcError,
    platform_rpc_error,
    shown,
)
from mcp_gateway.selectors import Catalog, catalog_cache
from mcp_gateway.upstream import UnsendableMessage, UpstreamCallFailed, UpstreamUnavailable, pool
from observability import metrics, telemetry
from tenants.quota import QuotaExceeded, tool_call_quota_reserve

logger = logging.getLogger(__name__)

MODERN_ONLY_FIELDS = ("resultType", "ttlMs", "cacheScope")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Longer than any "<server>.<tool>" (63 + 1 + 200) or resource URI worth sending; names go into the audit record.
MAX_NAME_LENGTH = 2048


def _shape(ctx: CallContext, result: dict[str, Any], *, listing: bool = False) -> dict[str, Any]:
    """Fit a result to the client's protocol version (2026 results say ``resultType``)."""
    if ctx.modern:
        result = {**result, "resultType": "complete"}
        if listing:
            # Grants can change at any time, so clients must not reuse a listing.
            result["cacheScope"] = "private"
            result["ttlMs"] = 0
        return result
    return {name: value for name, value in result.items() if name not in MODERN_ONLY_FIELDS}


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


async def request_handle(ctx: CallContext, message: Message) -> dict[str, Any]:
    """Answer one request (not ``initialize``); returns the JSON-RPC response object."""
    try:
        result = await _answer(ctx, message)
    except RpcError as exc:
        return exc.response(message.id)
    except PlatformError as exc:
        return platform_rpc_error(exc).response(message.id)
    except Exception:
        # This request's failure alone: its batch neighbours, and the connection, carry on.
        logger.exception("MCP %s failed", message.method)
        return RpcError(INTERNAL_ERROR, "Internal error.").response(message.id)
    return {"jsonrpc": "2.0", "id": message.id, "result": result}


async def _answer(ctx: CallContext, message: Message) -> dict[str, Any]:
    method = message.method
    if method == "ping" and not ctx.modern:
        return {}
    if method == "server/discover" and ctx.modern:
        return discover_result()
    if method == "logging/setLevel" and not ctx.modern:
        # Accepted and ignored (the gateway sends no log messages), but only with a level the spec names.
        if message.params.get("level") not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: 'level' must be one of {', '.join(LOG_LEVELS)}.")
        return {}
    catalog = await catalog_cache.get()
    if ctx.bundle and ctx.bundle not in catalog.bundles:
        raise RpcError(INVALID_REQUEST, f"Virtual server '{ctx.bundle}' no longer exists.", status=404)
    if method == "tools/list":
        tools = [entry.spec for entry in catalog.visible_tools(ctx.key, ctx.bundle)]
        return _shape(ctx, {"tools": tools}, listing=True)
    if method == "tools/call":
        return await tool_call(ctx, catalog, message.params)
    if method == "prompts/list":
        return _shape(ctx, {"prompts": [] if ctx.bundle else catalog.visible_prompts(ctx.key)}, listing=True)
    if method == "prompts/get":
        return await _prompt_get(ctx, catalog, message.params)
    if method == "resources/list":
        return _shape(ctx, {"resources": [] if ctx.bundle else catalog.visible_resources(ctx.key)}, listing=True)
    if method == "resources/templates/list":
        return _shape(ctx, {"resourceTemplates": []}, listing=True)
    if method == "resources/read":
        return await _resource_read(ctx, catalog, message.params)
    raise RpcError(METHOD_NOT_FOUND, f"Method not found: '{shown(method)}'.")


def _name_param(params: dict[str, Any], param: str, method: str) -> str:
    """A tool or prompt name, or a resource URI: a non-empty printable string (a NUL never reaches the record)."""
    value = params.get(param)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: {method} needs '{param}', a printable string of at most {MAX_NAME_LENGTH} characters.",
        )
    return value


def _unavailable(kind: str, name: str) -> RpcError:
    """The one answer for a name that does not exist, is not granted or is outside this endpoint.

    All three answer alike, with the same code, message and data, so no tenant learns
    which names exist elsewhere by probing.
    """
    data = {"type": "permission_error", "code": f"{kind}_not_granted"}
    if kind == "resource":
        data["uri"] = name
    return RpcError(
        INVALID_PARAMS,
        f"Unknown {kind} '{name}': it does not exist, or is not granted to this API key on this endpoint.",
        data=data,
    )


async def tool_call(ctx: CallContext, catalog: Catalog, params: dict[str, Any]) -> dict[str, Any]:
    """Check the grant and the quota, call the upstream tool, and audit the call (whatever its outcome)."""
    name = _name_param(params, "name", "tools/call")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'arguments' must be an object.")
    entry = catalog.tools.get(name)
    chosen = catalog.bundles.get(ctx.bundle) if ctx.bundle else None
    if entry is not None and ((chosen is not None and name not in chosen) or not catalog.allows(ctx.key, entry)):
        entry = None
    call = AuditedCall(ctx, "mcp.tool_call", f"mcp_tool:{name}", {"arguments_sha256": ""})
    if entry is not None:
        call.details.update(server=entry.server_name, tool=entry.name)
    try:
        with call:
            try:
                call.details["arguments_sha256"] = hashlib.sha256(arguments_encode(arguments)).hexdigest()
            except RpcError:
                call.fail("invalid_arguments")
                call.details["arguments_sha256"] = arguments_hash_lenient(arguments)
                raise
            if entry is None:
                call.refuse("tool_not_granted")
                raise _unavailable("tool", name)
            try:
                await tool_call_quota_reserve(ctx.key.quotas)
            except QuotaExceeded as exc:
                call.refuse(exc.code or "rate_limited")
                raise RpcError(RATE_LIMITED, exc.message, data={"type": exc.type, "code": exc.code}) from None
            shaped = _shape(ctx, _dump(await _tool_run(ctx, catalog, entry, arguments)))
            if shaped.get("isError"):
                call.fail("tool_error")
            return shaped
    finally:
        server = entry.server_name if entry is not None else ""
        metrics.tool_call_observe(server, TOOL_CALL_OUTCOMES.get(call.outcome, "error"), call.seconds)


async def _tool_run(ctx: CallContext, catalog: Catalog, entry: Any, arguments: dict[str, Any]) -> Any:
    """The upstream's tools/call, in a span the upstream server continues (trace context in params._meta, SEP-414)."""
    with telemetry.span("mcp.tool_call", _tool_call_attributes(entry)):
        meta: dict[str, Any] = {}
        telemetry.inject(meta)
        tool = entry.name
        return await _upstream(
            catalog,
            entry.server_id,
            lambda client: client.call_tool(
                tool,
                arguments,
                progress_callback=ctx.progress,
                meta=meta or None,  # type: ignore[arg-type]
            ),
        )


def _tool_call_attributes(entry: Any) -> dict[str, Any]:
    """The tool call span's attributes: OpenTelemetry's MCP and GenAI conventions, and the platform's own."""
    return {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": entry.name,
        "llmp.mcp.server": entry.server_name,
        "llmp.mcp.tool": entry.name,
    }


async def _upstream(catalog: Catalog, server_id: int, operation: Any) -> Any:
    target = catalog.targets[server_id]
    try:
        return await pool.run(target, operation)
    except MCPError as exc:
        raise RpcError(exc.error.code, exc.error.message, data=exc.error.data) from None
    except UnsendableMessage as exc:
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: the request cannot be encoded for the upstream server ({str(exc)[:200]}).",
            data={"type": "invalid_request_error", "code": "invalid_params"},
        ) from None
    except UpstreamCallFailed as exc:
        raise RpcError(UPSTREAM_ERROR, f"Upstream MCP server failed this request: {exc}") from None
    except UpstreamUnavailable as exc:
        raise RpcError(UPSTREAM_ERROR, f"Upstream MCP server unavailable: {exc}") from None
    except ssrf.SsrfBlocked as exc:
        raise RpcError(UPSTREAM_ERROR, f"Upstream MCP server refused by the SSRF policy: {exc.message}") from None


async def _audited(
    ctx: CallContext,
    *,
    action: str,
    kind: str,
    name: str,
    server: str | None,
    fetch: Callable[[], Awaitable[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """Run ``fetch`` (None: the ``kind`` named ``name`` is unavailable to this key) and audit the attempt."""
    details = {"server": server} if server is not None else {}
    with AuditedCall(ctx, action, f"mcp_{kind}:{name}", details) as call:
        if fetch is None:
            call.refuse(f"{kind}_not_granted")
            raise _unavailable(kind, name)
        return await fetch()


async def _prompt_get(ctx: CallContext, catalog: Catalog, params: dict[str, Any]) -> dict[str, Any]:
    name = _name_param(params, "name", "prompts/get")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    # Prompt arguments are strings (the spec's GetPromptRequest); the SDK refuses anything else.
    if not isinstance(arguments, dict) or not all(isinstance(value, str) for value in arguments.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: 'arguments' must be an object of strings.")
    found = catalog.prompts.get(name)
    if found is None or ctx.bundle or found[0] not in catalog.servers_of(ctx.key):
        return await _audited(ctx, action="mcp.prompt_get", kind="prompt", name=name, server=None, fetch=None)
    server_id = found[0]
    upstream_name = name.split(".", 1)[1]

    async def fetch() -> dict[str, Any]:
        result = await _upstream(catalog, server_id, lambda client: client.get_prompt(upstream_name, arguments))
        return _shape(ctx, _dump(result))

    server = catalog.targets[server_id].name
    return await _audited(ctx, action="mcp.prompt_get", kind="prompt", name=name, server=server, fetch=fetch)


async def _resource_read(ctx: CallContext, catalog: Catalog, params: dict[str, Any]) -> dict[str, Any]:
    uri = _name_param(params, "uri", "resources/read")
    found = None if ctx.bundle else catalog.resource_offer(ctx.key, uri)
    if found is None:
        return await _audited(ctx, action="mcp.resource_read", kind="resource", name=uri, server=None, fetch=None)
    server_id = found[0]

    async def fetch() -> dict[str, Any]:
        result = await _upstream(catalog, server_id, lambda client: client.read_resource(uri))
        return _shape(ctx, _dump(result))

    server = catalog.targets[server_id].name
    return await _audited(ctx, action="mcp.resource_read", kind="resource", name=uri, server=server, fetch=fetch)
