"""The MCP transports' consumers, as ``llm_platform/asgi.py`` routes URLs to them.

- ``/mcp``, ``/mcp/<bundle>``: ``StreamableHttpConsumer``; POST and DELETE in
  ``streamable_http``, GET (the session's stream) in ``get_stream``.
- ``/mcp/sse``, ``/mcp/<bundle>/sse`` and ``/mcp/messages``: ``LegacySseConsumer`` and
  ``LegacyMessagesConsumer`` in ``legacy_sse``.

What they share (header checks, key auth, error answers) is in ``base``; the SSE streams
they open in ``mcp_gateway/streams.py``; the methods they call in ``mcp_gateway/methods.py``.
"""

from mcp_gateway.consumers.legacy_sse import LegacyMessagesConsumer, LegacySseConsumer
from mcp_gateway.consumers.streamable_http import StreamableHttpConsumer

__all__ = ["LegacyMessagesConsumer", "LegacySseConsumer", "StreamableHttpConsumer"]
