"""A stdio MCP server for the tests, built with the official SDK: it reports what it was given.

Started by the gateway (through its launcher) as ``python tests/mcp_gateway/stdio_server.py``;
it imports nothing from the project, as an operator's tool would not.
"""

from __future__ import annotations

import os
import resource

from mcp.server.mcpserver import MCPServer

server = MCPServer("stdio-upstream", instructions="A local tool process for the gateway tests.")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def environment() -> dict[str, object]:
    """The names of the environment variables this process sees, the credential and its directories."""
    return {
        "names": sorted(os.environ),
        "token": os.environ.get("UPSTREAM_TOKEN", ""),
        "home": os.environ.get("HOME", ""),
        "cwd": os.getcwd(),
    }


@server.tool()
def limits() -> dict[str, object]:
    """The resource limits and umask this process runs under."""
    mask = os.umask(0)
    os.umask(mask)
    return {
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "address_space": list(resource.getrlimit(resource.RLIMIT_AS)),
        "open_files": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "umask": mask,
    }


if __name__ == "__main__":
    server.run("stdio")
