"""What in a URL is a credential: user info, or query parameters whose names say they hold one."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit


def url_credentials(url: str, *, is_secret: Callable[[str], bool]) -> str:
    """What in ``url`` is a credential (user info, a query parameter ``is_secret`` names), or ''."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""  # the URL validator reports it
    if parts.username or parts.password:
        return "user:password@"
    names = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if is_secret(name)})
    return f"query parameter {', '.join(names)}" if names else ""
