"""What the config models are made of: the base section, shared field checks, errors in the file's terms."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

# Union members' tags, which pydantic puts in an error's location; they are no part of the file's path.
_UNION_TAGS = {"limits as a list", "limits as a mapping"}


class ConfigError(ValueError):
    """The file is not a valid config; the message says where and why."""


def refuse(message: str, *, at: str = "") -> PydanticCustomError:
    """A validation error whose message is ``message`` as is, at ``at`` below the value's own path."""
    return PydanticCustomError("config", "{message}", {"message": message, "at": at})


def config_error(exc: ValidationError) -> ConfigError:
    """The first problem pydantic found, as ``path message`` in the file's own terms."""
    error = exc.errors()[0]
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS:
            path += f".{part}" if path else str(part)
    context = error.get("ctx") or {}
    at = context.get("at", "")
    path += f".{at}" if path and at and not at.startswith("[") else at
    got = type(error["input"]).__name__
    message = {
        "config": context.get("message", ""),
        "list_type": f"must be a list, got {got}",
        "dict_type": f"must be a mapping, got {got}",
        "model_type": f"must be a mapping, got {got}",
        "model_attributes_type": f"must be a mapping, got {got}",
        "missing": "is required",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
    }.get(error["type"], error["msg"])
    if not path:
        return ConfigError(message)
    return ConfigError(f"{path} {message}" if message.startswith(("must ", "is ")) else f"{path}: {message}")


def resolve(value: Any, at: str = "") -> Any:
    """LiteLLM's ``os.environ/NAME`` indirection, so secrets stay out of the file."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.removeprefix("os.environ/")
        if name not in os.environ:
            raise refuse(f"environment variable {name} is not set", at=at)
        return os.environ[name]
    return value


def _below(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


def resolve_params(params: Any, at: str = "") -> Any:
    """``resolve`` on every value, also inside mappings such as ``extra_headers`` (LiteLLM resolves only
    the top level; an ``os.environ/`` string meant literally as a header value is not a use case)."""
    if not isinstance(params, dict):
        return params
    return {
        name: resolve_params(value, _below(at, name)) if isinstance(value, dict) else resolve(value, _below(at, name))
        for name, value in params.items()
    }


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise refuse("must be a non-empty string")
    return value.strip()


def names(what: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise refuse(f"must be a list of {what}")
        return value

    return check


def sequence(value: Any) -> Any:
    return [] if value is None else value


Text = Annotated[str, BeforeValidator(text)]
Sequence = BeforeValidator(sequence)


class Section(BaseModel):
    """A mapping of the file: keys it does not name are ignored, or refused when ``unknown`` names them."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    unknown: ClassVar[str] = ""  # "field", "limit", ...: refuse other keys, naming them so
    expected: ClassVar[bool] = True  # list the known keys in the refusal

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if cls.unknown and isinstance(data, dict):
            known = {field.alias or name for name, field in cls.model_fields.items()}
            extra = sorted(str(key) for key in set(data) - known)
            if extra:
                listed = f"; expected {', '.join(sorted(known))}" if cls.expected else ""
                raise refuse(f"unknown {cls.unknown}(s) {', '.join(extra)}{listed}")
        return data


def optional_text(value: Any) -> Any:
    return "" if value is None else text(value)
