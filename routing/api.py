"""The routing app's REST endpoints (django-ninja): the model list."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Schema

from routing.selectors import deployment_cache
from tenants.auth import KeyContext

router = Router(tags=["models"])


class ModelOut(Schema):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(Schema):
    object: str = "list"
    data: list[ModelOut]


@router.get("/models", response=ModelList, summary="Models this key may use (OpenAI list format)")
async def models_list(request: HttpRequest) -> ModelList:
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    key.require_scope("models")
    groups = await deployment_cache.groups()
    data = [
        ModelOut(id=name, created=min(target.created for target in targets), owned_by=key.tenant_slug)
        for name, targets in sorted(groups.items())
        if key.allows_model(name)
    ]
    return ModelList(data=data)
