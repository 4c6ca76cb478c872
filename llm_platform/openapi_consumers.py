"""The OpenAPI description of the endpoints the Channels consumers serve, added to the API's own.

``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` are not ninja routes
(they stream and sit on the hot path), so ninja's schema cannot see them. Their request and
response schemas here are the official ``openai`` SDK's own types, so the docs say exactly
what the SDK sends and reads. They are built when the schema is first asked for, never at
start-up (importing the SDK's types takes a second).
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "description": "e.g. invalid_request_error, rate_limit_error"},
                "code": {"type": ["string", "null"], "description": "e.g. rate_limit_exceeded, api_key_revoked"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
ERRORS = {
    "400": "The request is not valid (JSON, parameters, sizes).",
    "401": "The API key is missing, unknown, revoked or expired.",
    "403": "The key may not use this model or endpoint.",
    "404": "No model of that name is served.",
    "413": "The body is larger than MAX_REQUEST_BYTES.",
    "429": "A quota or rate limit of the key or its tenant is reached (see the x-ratelimit-* headers).",
    "502": "The provider failed.",
    "503": "The provider, or a store the platform needs, is unavailable.",
    "504": "The provider did not answer in time.",
}
STREAM_NOTE = (
    "With `stream: true` the answer is a `text/event-stream`: one `data:` line of JSON per chunk, then `data: [DONE]`."
)


def _endpoints() -> list[tuple[str, str, str, Any, Any, Any]]:
    from openai.types import Completion, CreateEmbeddingResponse
    from openai.types import completion_create_params as completions
    from openai.types import embedding_create_params as embeddings
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.chat import completion_create_params as chat

    return [
        ("/v1/chat/completions", "chat", "Create a chat completion",
         chat.CompletionCreateParamsNonStreaming, ChatCompletion, ChatCompletionChunk),
        ("/v1/completions", "completions", "Create a completion (legacy)",
         completions.CompletionCreateParamsNonStreaming, Completion, Completion),
        ("/v1/embeddings", "embeddings", "Create embeddings",
         embeddings.EmbeddingCreateParams, CreateEmbeddingResponse, None),
    ]  # fmt: skip


def _component(schema: dict[str, Any], name: str, components: dict[str, Any]) -> dict[str, str]:
    """Put ``schema`` and its definitions among the components; a reference to it."""
    for definition, body in schema.pop("$defs", {}).items():
        components.setdefault(definition, body)
    components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def consumer_paths_add(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (ninja's OpenAPI document) with the consumers' endpoints described in it."""
    from pydantic import TypeAdapter

    template = "#/components/schemas/{model}"
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error = _component(dict(ERROR_SCHEMA), "Error", components)
    security: list[dict[str, list[str]]] = [{name: []} for name in schema["components"].get("securitySchemes", {})]
    for path, tag, summary, params, response, chunk in _endpoints():
        request = TypeAdapter(params).json_schema(ref_template=template)
        if chunk is not None:
            request["properties"]["stream"] = {"type": "boolean", "default": False, "description": STREAM_NOTE}
        name = f"{response.__name__}Request" if tag != "chat" else "ChatCompletionRequest"
        answer: dict[str, Any] = {
            "application/json": {"schema": _component(response.model_json_schema(ref_template=template),
                                                      response.__name__, components)},
        }  # fmt: skip
        if chunk is not None:
            chunk_ref = _component(chunk.model_json_schema(ref_template=template), chunk.__name__, components)
            answer["text/event-stream"] = {"schema": chunk_ref}
        responses: dict[str, Any] = {"200": {"description": "OK" + (f". {STREAM_NOTE}" if chunk else ""),
                                             "content": answer}}  # fmt: skip
        for status, description in ERRORS.items():
            responses[status] = {"description": description, "content": {"application/json": {"schema": error}}}
        schema["paths"][path] = {
            "post": {
                "operationId": f"{tag}_create",
                "summary": summary,
                "description": "Served by a Channels consumer: routed across deployments, with retries, "
                "fallbacks, quotas and a usage record. OpenAI-compatible: the official SDK works unchanged.",
                "tags": [tag],
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _component(request, name, components)}},
                },
                "responses": responses,
            }
        }
    return schema
