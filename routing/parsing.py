"""The request bodies the gateway accepts, per endpoint: parsed and validated the way OpenAI does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from routing import upstream
from tenants.request_input import json_body_parse

# Longer names exist nowhere: deployments' public names are at most this long.
MAX_MODEL_NAME = 200
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ROLES_TEXT = ", ".join(sorted(MESSAGE_ROLES))


@dataclass(slots=True)
class ModelRequest:
    """A validated request body: the payload as sent, the model asked for and how to answer."""

    payload: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _check_number(payload: dict[str, Any], name: str, *, low: float, high: float, integer: bool = False) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _type_error(name, "an integer" if integer else "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid value for '{name}': {value} is outside [{low:g}, {high:g}].", param=name, code="invalid_value"
        )


def chat_request_parse(body: bytes) -> ModelRequest:
    """Validate a chat completions body the way OpenAI does, with the offending param named."""
    payload, model = _object_with_model(body)
    messages = payload.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is a required property.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages", code="invalid_value")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{index}]", "an object", message)
        role = message.get("role")
        # A list or an object is unhashable: it must not reach the set lookup below.
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{index}].role': {role!r}; expected one of {ROLES_TEXT}.",
                param=f"messages[{index}].role",
                code="invalid_value",
            )
    stream, include_usage = _generation_options(payload)
    _check_number(payload, "max_tokens", low=1, high=10_000_000, integer=True)
    _check_number(payload, "max_completion_tokens", low=1, high=10_000_000, integer=True)
    return ModelRequest(payload, model, stream, include_usage)


def completion_request_parse(body: bytes) -> ModelRequest:
    """Validate a legacy ``/v1/completions`` body (a ``prompt`` instead of ``messages``)."""
    payload, model = _object_with_model(body)
    prompt = payload.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is a required property.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, str) and not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt", code="invalid_value")
    if not isinstance(prompt, str | list) or not _texts_or_tokens(prompt):
        raise _type_error("prompt", "a string, an array of strings or an array of token arrays", prompt)
    stream, include_usage = _generation_options(payload)
    _check_number(payload, "best_of", low=1, high=20, integer=True)
    _check_number(payload, "max_tokens", low=0, high=10_000_000, integer=True)
    if (payload.get("best_of") or 1) < (payload.get("n") or 1):
        raise InvalidRequest("'best_of' must be at least 'n'.", param="best_of", code="invalid_value")
    return ModelRequest(payload, model, stream, include_usage)


def is_token_array(value: Any) -> bool:
    """An array of token ids (``[1, 2]``), as a prompt or embedding input may be given."""
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def _texts_or_tokens(value: str | list[Any]) -> bool:
    """A string, an array of strings, a token array or an array of token arrays."""
    return all(isinstance(item, str) for item in value) or is_token_array(value) or all(map(is_token_array, value))


def embedding_request_parse(body: bytes) -> ModelRequest:
    """Validate an ``/v1/embeddings`` body: ``input`` is text, texts, tokens or token arrays."""
    payload, model = _object_with_model(body)
    data = payload.get("input")
    if data is None:
        raise InvalidRequest("'input' is a required property.", param="input", code="missing_required_parameter")
    if isinstance(data, str):
        if not data:
            raise InvalidRequest("'input' must not be an empty string.", param="input", code="invalid_value")
    elif isinstance(data, list):
        if not data:
            raise InvalidRequest("'input' must not be an empty array.", param="input", code="invalid_value")
        if not _texts_or_tokens(data):
            raise _type_error("input", "a string, an array of strings or an array of token arrays", data)
    else:
        raise _type_error("input", "a string or an array", data)
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid value for 'encoding_format': {encoding!r}; expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    _check_number(payload, "dimensions", low=1, high=100_000, integer=True)
    if payload.get("stream"):
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream", code="invalid_value")
    return ModelRequest(payload, model, False, False)


def _object_with_model(body: bytes) -> tuple[dict[str, Any], str]:
    payload = json_body_parse(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    # The requested name is stored (usage records, audit targets): PostgreSQL text cannot hold NUL.
    if len(model) > MAX_MODEL_NAME or "\x00" in model:
        raise InvalidRequest(
            f"Invalid value for 'model': a model name is at most {MAX_MODEL_NAME} characters, without NUL.",
            param="model",
            code="invalid_value",
        )
    return payload, model


def _generation_options(payload: dict[str, Any]) -> tuple[bool, bool]:
    """Check what chat and completions share (streaming, sampling, ``n``); return ``stream`` and ``include_usage``."""
    stream, include_usage = _stream_options(payload)
    _check_number(payload, "temperature", low=0, high=2)
    _check_number(payload, "top_p", low=0, high=1)
    _check_number(payload, "n", low=1, high=128, integer=True)
    return stream, include_usage


def _stream_options(payload: dict[str, Any]) -> tuple[bool, bool]:
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _type_error("stream_options.include_usage", "a boolean", include_usage)
    return stream, include_usage


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI endpoint the gateway serves: its name in usage records, key scope, upstream path."""

    name: str
    scope: str
    path: str
    parse: Callable[[bytes], ModelRequest]


CHAT = Endpoint("chat.completions", "chat", upstream.CHAT_PATH, chat_request_parse)
# Legacy text completions generate text as chat does, so the "chat" scope covers them.
COMPLETIONS = Endpoint("completions", "chat", upstream.COMPLETIONS_PATH, completion_request_parse)
EMBEDDINGS = Endpoint("embeddings", "embeddings", upstream.EMBEDDINGS_PATH, embedding_request_parse)


def prompt_of(payload: dict[str, Any]) -> Any:
    """The part of a request that is the prompt: chat messages, a completion prompt or embedding input."""
    for name in ("messages", "prompt", "input"):
        if name in payload:
            return payload[name]
    return ""
