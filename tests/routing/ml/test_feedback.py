"""POST /v1/feedback and the admin's score form: who may score what, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from routing.ml.models import RequestFeedback
from routing.models import RequestLog


@pytest.fixture
def logged(owner, owner_key) -> RequestLog:
    return RequestLog.objects.create(
        request_id="req_feedback0001",
        created_at=timezone.now(),
        tenant=owner,
        api_key=owner_key.key,
        model_requested="auto",
        model_served="openai/weak-model",
        status_code=200,
    )


def post(secret: str | None, body: object) -> tuple[int, dict]:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str) else json.dumps(body)
    response = Client().post("/v1/feedback", data=data, content_type="application/json", **headers)
    return response.status_code, response.json()


def test_the_key_that_made_a_request_can_score_it(owner_key, logged):
    status, body = post(owner_key.secret, {"request_id": logged.request_id, "score": 0.25, "comment": "wrong"})
    assert status == 200 and body == {
        "object": "feedback",
        "request_id": logged.request_id,
        "score": 0.25,
        "model": "auto",
    }
    feedback = RequestFeedback.objects.get(request_id=logged.request_id)
    assert (feedback.score, feedback.source, feedback.model_served) == (0.25, "api", "openai/weak-model")
    # Scoring again replaces the score; both changes are audited.
    assert post(owner_key.secret, {"request_id": logged.request_id, "score": 0.9})[0] == 200
    assert RequestFeedback.objects.get(request_id=logged.request_id).score == 0.9
    assert AuditEvent.objects.filter(action="request.feedback", target=f"request:{logged.request_id}").count() == 2


def test_another_key_sees_the_request_as_unknown(owner, key_factory, logged):
    other = key_factory(owner, "other key")
    status, body = post(other.secret, {"request_id": logged.request_id, "score": 1})
    assert status == 404 and body["error"]["code"] == "request_not_found"
    assert body["error"]["param"] == "request_id"
    assert not RequestFeedback.objects.exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "req_feedback0001", "score": 1.5}, "score"),
        ({"request_id": "req_feedback0001", "score": -0.1}, "score"),
        ({"request_id": "req_feedback0001", "score": "good"}, "score"),
        ({"request_id": "req_feedback0001"}, "score"),
        ({"score": 0.5}, "request_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(owner_key, logged, body, param):
    status, error = post(owner_key.secret, body)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param


def test_unparseable_body_and_missing_key_are_openai_errors(owner_key, logged):
    status, error = post(owner_key.secret, "{not json")
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    status, error = post(None, {"request_id": logged.request_id, "score": 1})
    assert status == 401 and error["error"]["type"] == "authentication_error"


def test_key_without_the_feedback_scope_is_refused(owner, key_factory, logged):
    scoped = key_factory(owner, "chat only", scopes=["chat"])
    RequestLog.objects.filter(pk=logged.pk).update(api_key=scoped.key)
    status, error = post(scoped.secret, {"request_id": logged.request_id, "score": 1})
    assert status == 403 and error["error"]["code"] == "scope_not_allowed"


def test_operator_records_a_score_in_the_admin(logged):
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client = Client()
    client.login(username="root", password="pw-for-tests-only")
    response = client.post(
        "/admin/routing/requestfeedback/add/", {"request_id": logged.request_id, "score": "0.4", "comment": "meh"}
    )
    assert response.status_code == 302, response.content[:500]
    feedback = RequestFeedback.objects.get(request_id=logged.request_id)
    assert (feedback.score, feedback.source, feedback.actor) == (0.4, "admin", "user:root")
    assert feedback.tenant_id == logged.tenant_id
