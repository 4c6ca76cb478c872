"""MCP protocol versions and what a client learns of this server: initialize, server/discover, 2026's ``_meta``."""

from __future__ import annotations

from typing import Any

from mcp_gateway.jsonrpc import HEADER_MISMATCH, INVALID_PARAMS, Message, RpcError

LEGACY_VERSION = "2024-11-05"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STREAMABLE_HANDSHAKE_VERSIONS = HANDSHAKE_VERSIONS[1:]
MODERN_VERSIONS = ("2026-07-28",)
DEFAULT_HEADER_VERSION = "2025-03-26"  # a handshake client that sends no MCP-Protocol-Version
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO = {"name": "llm-platform-mcp-gateway", "version": "1.0"}
CAPABILITIES = {"tools": {"listChanged": True}, "prompts": {"listChanged": True}, "resources": {"listChanged": True}}
INSTRUCTIONS = "Tools of the upstream servers your tenant was granted, named '<server>.<tool>'."


def initialize_result(params: dict[str, Any], versions: tuple[str, ...]) -> dict[str, Any]:
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: initialize needs 'protocolVersion'.")
    version = requested if requested in versions else versions[-1]
    return {
        "protocolVersion": version,
        "capabilities": CAPABILITIES,
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
    }


def discover_result() -> dict[str, Any]:
    return {
        "supportedVersions": list(MODERN_VERSIONS),
        "capabilities": CAPABILITIES,
        "instructions": INSTRUCTIONS,
        "cacheScope": "private",
        "ttlMs": 0,
        "resultType": "complete",
        "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
    }


def modern_meta_check(message: Message, header_version: str) -> None:
    """A 2026-07-28 request carries its version and capabilities in ``params._meta``."""
    meta = message.params.get("_meta")
    if not isinstance(meta, dict) or META_VERSION not in meta:
        raise RpcError(INVALID_PARAMS, f"Invalid params: '_meta' must carry '{META_VERSION}'.", status=400)
    if meta[META_VERSION] != header_version:
        raise RpcError(
            HEADER_MISMATCH,
            f"MCP-Protocol-Version header '{header_version}' does not match _meta '{meta[META_VERSION]}'.",
            status=400,
        )
    if not isinstance(meta.get(META_CAPABILITIES), dict):
        raise RpcError(INVALID_PARAMS, f"Invalid params: '_meta' must carry '{META_CAPABILITIES}'.", status=400)
