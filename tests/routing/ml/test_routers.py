"""Router kinds on the shipped synthetic table: learned routers beat random, rules do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from routing.ml.decide import decide_sync
from routing.ml.evaluation import router_evaluate
from routing.ml.routers import calibration_quantiles, router_fit, router_from_bytes, threshold_for_share
from routing.ml.selectors import GroupState
from tests.routing.ml.prompts import EASY_PROMPTS, HARD_PROMPTS


@pytest.mark.parametrize("kind", ["knn", "logistic"])
def test_learned_router_recovers_quality_far_better_than_random(kind, trained, table_split):
    _, held = table_split
    scores = trained[kind].scores(held.texts)
    metrics = router_evaluate(scores, held.quality_strong, held.quality_weak, held.cost_strong, held.cost_weak)
    gaps = held.quality_strong - held.quality_weak
    oracle = router_evaluate(gaps, held.quality_strong, held.quality_weak, held.cost_strong, held.cost_weak)
    # A random router scores about 0.5; one that knows every answer's quality, oracle["apgr"].
    assert metrics["apgr"] > 0.5 + 0.75 * (oracle["apgr"] - 0.5), (metrics["apgr"], oracle["apgr"])
    at_half = next(p for p in metrics["curve"] if p["target_share"] == 0.5)
    # Hard prompts are also the long ones, so half the calls is more than half the cost.
    assert at_half["quality_recovered"] > 0.8 and at_half["cost_saved"] > 0.1
    ends = metrics["curve"][0], metrics["curve"][-1]
    assert ends[0]["quality"] == pytest.approx(metrics["baselines"]["always_weak"]["quality"])
    assert ends[1]["quality"] == pytest.approx(metrics["baselines"]["always_strong"]["quality"])


@pytest.mark.parametrize("kind", ["knn", "logistic"])
def test_learned_router_sends_hard_prompts_strong_and_easy_prompts_weak(kind, trained, table_split):
    _, held = table_split
    router = trained[kind]
    threshold = threshold_for_share(calibration_quantiles(router.scores(held.texts)), 0.5)
    assert all(router.score(prompt) >= threshold for prompt in HARD_PROMPTS)
    assert all(router.score(prompt) < threshold for prompt in EASY_PROMPTS)


@pytest.mark.parametrize("kind", ["knn", "logistic"])
@pytest.mark.parametrize("backend", ["hashing", "tfidf"])
def test_router_round_trips_through_its_arrays_without_pickle(kind, backend, table_split):
    train, held = table_split
    router = router_fit(kind=kind, texts=train.texts[:600], labels=train.labels[:600], backend=backend)
    rebuilt = router_from_bytes(router.to_bytes(), kind=kind, backend=backend, params=router.params)
    np.testing.assert_allclose(rebuilt.scores(held.texts[:50]), router.scores(held.texts[:50]), rtol=1e-5)


def test_an_archive_holding_a_pickle_is_refused(tmp_path):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, lr_coef=np.array([object()], dtype=object), lr_intercept=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        router_from_bytes(buffer.getvalue(), kind="logistic", backend="hashing", params={}).score("hi")


def rules_group(**rules: object) -> GroupState:
    return GroupState(
        id=1,
        name="auto",
        strong_model="strong-model",
        weak_model="weak-model",
        strong_price=10.0,
        weak_price=0.5,
        kind="rules",
        strong_share=0.5,
        rules=dict(rules),
        mode="active",
        active=None,
        shadow=None,
        ab=None,
        ab_percent=0,
        strong_tenants=frozenset({7}),
        weak_tenants=frozenset({8}),
    )


def decide(group: GroupState, text: str, *, tenant_id: int = 1, max_cost: float | None = None):
    return decide_sync(group, text, tenant_id=tenant_id, request_id="req_1", max_cost=max_cost, max_tokens=256)


def test_rules_router_by_keyword_length_tenant_and_default():
    group = rules_group(strong_keywords=["prove"], weak_keywords=["translate"], strong_if_chars_over=200)
    assert decide(group, "Please PROVE this lemma").served == "strong-model"
    assert decide(group, "translate hello").served == "weak-model"
    assert decide(group, "x" * 201).record["reason"] == "length>200"
    assert decide(group, "x" * 201).served == "strong-model"
    assert decide(group, "short question").served == "weak-model"
    assert decide(group, "short question", tenant_id=7).served == "strong-model"
    assert decide(group, "prove it", tenant_id=8).served == "weak-model"
    assert decide(rules_group(default="strong"), "anything").served == "strong-model"


def test_requested_max_cost_sends_an_expensive_choice_to_the_weak_model():
    group = rules_group(default="strong")
    # 256 output tokens at 10 USD per million is about 0.0026 USD on the strong model.
    cheap = decide(group, "hello", max_cost=0.001)
    assert cheap.served == "weak-model" and cheap.record["reason"] == "max_cost"
    assert decide(group, "hello", max_cost=1.0).served == "strong-model"


def test_decision_record_names_candidates_prices_and_latency():
    outcome = decide(rules_group(strong_keywords=["prove"]), "prove it")
    record = outcome.record
    assert [c["role"] for c in record["candidates"]] == ["strong", "weak"]
    assert record["candidates"][0]["price_per_mtok"] == 10.0
    assert record["router"] == "rules" and record["chosen"] == record["served"] == "strong-model"
    assert record["decision_ms"] >= 0
    assert dict(outcome.headers)[b"x-route-router"] == b"rules"


@pytest.mark.parametrize("kind", ["knn", "logistic"])
@pytest.mark.parametrize("backend", ["hashing", "tfidf"])
def test_request_path_scoring_matches_the_batch_scoring(kind, backend, table_split):
    train, held = table_split
    router = router_fit(kind=kind, texts=train.texts[:800], labels=train.labels[:800], backend=backend)
    prompts = [*held.texts[:100], "", "ünïcode — naïve café prompts", "x" * 5000]
    single = np.array([router.score(prompt) for prompt in prompts])
    np.testing.assert_allclose(single, router.scores(prompts), atol=1e-5)
