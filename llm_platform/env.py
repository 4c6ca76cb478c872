"""Typed readers for settings that come from the environment (12-factor)."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str = "") -> str:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker/K8s secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; set it to true or false.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_commands(name: str) -> dict[str, tuple[str, ...]]:
    """A JSON object of command names to argv lists (or shell-style strings), e.g.
    ``{"files": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]}``."""
    import json
    import re
    import shlex

    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object of name -> command.")
    commands: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", key):
            raise ImproperlyConfigured(f"{name}: '{key}' is not a valid name (lower-case letters, digits, '-', '_').")
        argv = shlex.split(value) if isinstance(value, str) else value
        if not isinstance(argv, list) or not argv or not all(isinstance(part, str) and part for part in argv):
            raise ImproperlyConfigured(f"{name}: '{key}' must be a non-empty list of strings (the argv) or a string.")
        commands[key] = tuple(argv)
    return commands
