"""An HTTP scope for driving an ASGI app or consumer in process (asgiref's ApplicationCommunicator), and its answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


def http_scope(
    method: str, path: str, headers: list[tuple[bytes, bytes]], *, host: str = "testserver"
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", host.encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": (host, 80),
    }


@dataclass
class Answer:
    """A whole HTTP answer received in process."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        return self.json()["error"]
