"""A request's routing decision reads right for every outcome: served, all attempts failed, none available."""

from __future__ import annotations

from django.utils.html import strip_tags

from routing.admin.request_logs import decision_html

BASE = {"group": "gpt-4o", "strategy": "simple-shuffle", "policy_version": 3, "decision_ms": 0.2}


def words(decision: dict | None, status_code: int | None, error_type: str = "") -> str:
    return " ".join(strip_tags(decision_html(decision, status_code=status_code, error_type=error_type)).split())


def test_a_served_request_names_the_deployment_and_its_model():
    text = words({**BASE, "chosen": 7, "served": 7, "served_model": "openai/gpt-4o"}, 200)
    assert text.startswith("Served by deployment 7 (openai/gpt-4o). Group gpt-4o")


def test_a_request_whose_attempts_all_failed_says_so_with_its_answer():
    attempts = [{"deployment": 7, "status": 503, "error": "overloaded", "ms": 12}]
    text = words({**BASE, "chosen": 7, "served": None, "attempts": attempts}, 502, "upstream_error")
    assert text.startswith("No deployment answered (HTTP 502, upstream_error): every attempt failed")


def test_no_available_deployment_and_no_decision_read_plainly():
    cooled = {**BASE, "chosen": None, "served": None, "candidates": [{"id": 7, "excluded": "cooling down"}]}
    assert words(cooled, 429, "rate_limit_error").startswith(
        "No deployment could take it (HTTP 429, rate_limit_error): none of the candidates below was available."
    )
    assert words(None, 404, "invalid_request_error").startswith(
        "No routing decision was recorded for this request (HTTP 404, invalid_request_error)"
    )
    for text in (words(cooled, 429), words(None, 404)):
        assert "nobody" not in text and "of —" not in text
