"""/v1/docs describes every endpoint: the ninja routes and the consumers' chat completions, completions, embeddings."""

from __future__ import annotations

from typing import Any

import pytest


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(value) for value in node))
    return set()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    from django.test import Client

    response = Client().get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_endpoint_is_documented_with_its_request_and_answers(document):
    paths = document["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(paths)
    schemas = document["components"]["schemas"]
    for path, request, answer in (
        ("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletion"),
        ("/v1/completions", "CompletionRequest", "Completion"),
        ("/v1/embeddings", "CreateEmbeddingResponseRequest", "CreateEmbeddingResponse"),
    ):
        post = paths[path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{request}")
        assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{answer}")
        assert {"400", "401", "429", "502"} <= set(post["responses"])
        assert post["security"] == [{"ApiKeyAuth": []}]
        assert "model" in schemas[request]["required"]
    chat = schemas["ChatCompletionRequest"]
    assert set(chat["required"]) == {"model", "messages"} and chat["properties"]["stream"]["type"] == "boolean"
    streamed = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert streamed["schema"]["$ref"].endswith("/ChatCompletionChunk")


def test_every_reference_in_the_document_resolves(document):
    names = set(document["components"]["schemas"])
    dangling = {ref for ref in refs(document) if ref.removeprefix("#/components/schemas/") not in names}
    assert dangling == set()


@pytest.mark.django_db
def test_the_docs_page_renders(client):
    page = client.get("/v1/docs")
    assert page.status_code == 200 and b"openapi.json" in page.content
