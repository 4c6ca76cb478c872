"""Key scopes: every endpoint family can be granted, and a role gives a key only the scopes whose data it may see."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.utils import timezone

from routing.ml.models import RequestFeedback
from routing.models import RequestLog


def feedback_post(secret: str, request_id: str) -> tuple[int, dict]:
    response = Client().post(
        "/v1/feedback",
        data=json.dumps({"request_id": request_id, "score": 0.5}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    return response.status_code, response.json()


def logged_request(tenant, key, request_id: str) -> RequestLog:
    return RequestLog.objects.create(
        request_id=request_id, created_at=timezone.now(), tenant=tenant, api_key=key, status_code=200
    )


def test_a_key_scoped_to_feedback_can_score_its_requests(owner, key_factory):
    scorer = key_factory(owner, "scorer", scopes=["feedback"])
    logged_request(owner, scorer.key, "req_scoped_feedback")
    status, body = feedback_post(scorer.secret, "req_scoped_feedback")
    assert status == 200, body
    assert RequestFeedback.objects.get(request_id="req_scoped_feedback").score == 0.5


@pytest.mark.parametrize("scopes", [["chat"], ["chat", "embeddings", "models", "mcp", "audit"]])
def test_a_key_scoped_without_feedback_cannot_score(owner, key_factory, scopes):
    chat_only = key_factory(owner, "chat only", scopes=scopes)
    logged_request(owner, chat_only.key, "req_unscoped_feedback")
    status, body = feedback_post(chat_only.secret, "req_unscoped_feedback")
    assert status == 403 and body["error"]["code"] == "scope_not_allowed"
    assert not RequestFeedback.objects.exists()
