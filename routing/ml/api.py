"""The ML routing REST endpoints (django-ninja): quality feedback on a request's answer."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Field, Router, Schema
from pydantic import ValidationError

from core.errors import InvalidRequest, NotFound
from routing.ml.services import FeedbackTargetMissing, feedback_record
from tenants.auth import KeyContext
from tenants.request_input import json_body_parse

router = Router(tags=["feedback"])


class FeedbackIn(Schema):
    request_id: str = Field(..., min_length=1, max_length=40, description="The x-request-id of the request.")
    score: float = Field(..., ge=0.0, le=1.0, description="Quality of the answer, 0 (useless) to 1 (perfect).")
    comment: str = Field("", max_length=1000)


class FeedbackOut(Schema):
    object: str = "feedback"
    request_id: str
    score: float
    model: str


def _feedback_parse(raw: bytes) -> FeedbackIn:
    """The body as ``FeedbackIn``, or an OpenAI-style 400 that names the offending field."""
    data = json_body_parse(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return FeedbackIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"Invalid '{param}': {first['msg']}.", param=param, code="invalid_value") from None


@router.post(
    "/feedback",
    response=FeedbackOut,
    summary="Score the answer to one of this key's requests",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": FeedbackIn.model_json_schema()}},
        }
    },
)
async def feedback_create(request: HttpRequest) -> FeedbackOut:
    key: KeyContext = request.auth  # type: ignore[attr-defined]
    key.require_scope("feedback")
    body = _feedback_parse(request.body)
    try:
        feedback = await sync_to_async(feedback_record)(
            request_id=body.request_id,
            score=body.score,
            comment=body.comment,
            actor=f"key:{key.prefix}",
            source="api",
            api_key_id=key.key_id,
            ip=request.META.get("REMOTE_ADDR"),
        )
    except FeedbackTargetMissing:
        # Requests of other keys look exactly like unknown ones.
        raise NotFound(
            f"No request '{body.request_id}' made with this API key (records are written a few seconds after "
            "the response; retry shortly if it just finished).",
            param="request_id",
            code="request_not_found",
        ) from None
    return FeedbackOut(request_id=feedback.request_id, score=feedback.score, model=feedback.model_requested)
