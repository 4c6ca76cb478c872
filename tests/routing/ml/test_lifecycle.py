"""Router artifacts: training, checksums, promotion, rollback, shadow mode and A/B split, all audited."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from asgiref.sync import async_to_sync

from audit.models import AuditEvent
from routing.ml import services
from routing.ml.models import RouterArtifact, SmartGroup
from routing.ml.selectors import ArtifactIntegrityError, artifact_load_sync
from routing.smart import smart_route
from tests.routing.ml.prompts import EASY_PROMPTS, HARD_PROMPTS


def route(model: str, text: str, *, tenant_id: int, request_id: str = "req_x", **extra: object):
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return async_to_sync(smart_route)(model=model, payload=payload, tenant_id=tenant_id, request_id=request_id)


@pytest.fixture
def group(group_factory) -> SmartGroup:
    return group_factory(strong_share=0.5)


@pytest.fixture
def knn(group) -> RouterArtifact:
    return services.router_train(group=group, actor="test", kind="knn", include_traffic=False)


def test_training_stores_a_checksummed_candidate_with_evaluation(group, knn):
    assert knn.version == 1 and knn.status == RouterArtifact.Status.CANDIDATE
    assert knn.sha256 == hashlib.sha256(bytes(knn.blob)).hexdigest()
    assert knn.metrics["apgr"] > 0.6 and len(knn.metrics["curve"]) == 21
    assert set(knn.metrics["baselines"]) == {"always_strong", "always_weak"}
    assert len(knn.calibration) == 201
    assert AuditEvent.objects.filter(action="router.train", target__endswith="knn@1").exists()


def test_ordinary_model_names_are_not_smart(owner, group):
    assert route("gpt-4o-mini", "hello", tenant_id=owner.pk) is None


def test_without_an_active_router_a_learned_group_falls_back_to_rules(owner, group):
    decision = route("auto", "prove it", tenant_id=owner.pk)
    assert decision.record["reason"] == "no_active_router"
    assert decision.model == "weak-model"  # empty rules: the default is the weak model


def test_promoted_router_decides_and_rollback_restores_the_previous(owner, group, knn):
    services.router_promote(artifact=knn, actor="test")
    hard = route("auto", HARD_PROMPTS[0], tenant_id=owner.pk)
    assert (hard.model, hard.router) == ("strong-model", "knn@1")
    assert hard.record["candidates"][0]["predicted_win_rate"] >= hard.record["threshold"]
    assert route("auto", EASY_PROMPTS[0], tenant_id=owner.pk).model == "weak-model"

    logistic = services.router_train(group=group, actor="test", kind="logistic", include_traffic=False)
    services.router_promote(artifact=logistic, actor="test")
    assert route("auto", HARD_PROMPTS[0], tenant_id=owner.pk).router == "logistic@2"
    knn.refresh_from_db()
    assert knn.status == RouterArtifact.Status.RETIRED

    restored = services.router_rollback(group=group, actor="test")
    assert restored.pk == knn.pk
    assert route("auto", HARD_PROMPTS[0], tenant_id=owner.pk).router == "knn@1"
    actions = list(AuditEvent.objects.filter(action__startswith="router.").values_list("action", flat=True))
    assert actions.count("router.promote") == 2 and "router.rollback" in actions


def test_rollback_without_history_is_refused(group, knn):
    services.router_promote(artifact=knn, actor="test")
    with pytest.raises(ValueError, match="no earlier promoted router"):
        services.router_rollback(group=group, actor="test")


def test_tampered_artifact_is_refused_and_the_strong_model_serves(owner, group, knn):
    services.router_promote(artifact=knn, actor="test")
    blob = bytearray(bytes(knn.blob))
    blob[len(blob) // 2] ^= 0xFF
    RouterArtifact.objects.filter(pk=knn.pk).update(blob=bytes(blob))
    with pytest.raises(ArtifactIntegrityError, match="fails its checksum"):
        artifact_load_sync(knn.pk)
    decision = route("auto", EASY_PROMPTS[0], tenant_id=owner.pk)
    assert decision.model == "strong-model" and decision.record["reason"] == "router_unavailable"


def test_tenant_share_overrides_the_group_threshold(owner, outsider, group, knn):
    services.router_promote(artifact=knn, actor="test")
    services.tenant_share_save(group=group, tenant_id=owner.pk, strong_share=1.0, actor="test")
    services.tenant_share_save(group=group, tenant_id=outsider.pk, strong_share=0.0, actor="test")
    mine = route("auto", EASY_PROMPTS[0], tenant_id=owner.pk)
    assert mine.model == "strong-model" and mine.record["share_source"] == "tenant"
    assert route("auto", HARD_PROMPTS[0], tenant_id=outsider.pk).model == "weak-model"


def test_shadow_router_is_recorded_but_never_served(owner, group, knn):
    services.router_promote(artifact=knn, actor="test")
    candidate = services.router_train(group=group, actor="test", kind="logistic", include_traffic=False)
    services.router_shadow_set(group=group, artifact=candidate, actor="test")
    decision = route("auto", HARD_PROMPTS[1], tenant_id=owner.pk)
    assert decision.router == "knn@1"
    assert decision.record["shadow"]["router"] == "logistic@2"
    assert decision.record["shadow"]["would_choose"] == "strong-model"
    assert AuditEvent.objects.filter(action="router.shadow").exists()


def test_shadow_mode_decides_but_serves_the_strong_model(owner, group, knn):
    services.router_promote(artifact=knn, actor="test")
    group.refresh_from_db()
    group.mode = SmartGroup.Mode.SHADOW
    services.smart_group_save(group=group, actor="test")
    decision = route("auto", EASY_PROMPTS[0], tenant_id=owner.pk)
    assert decision.model == "strong-model"
    assert decision.record["chosen"] == "weak-model" and decision.record["shadow_mode"] is True
    assert dict(decision.headers)[b"x-route-shadow"] == b"weak-model"


def test_ab_split_sends_the_configured_share_to_arm_b(owner, group, knn):
    services.router_promote(artifact=knn, actor="test")
    challenger = services.router_train(group=group, actor="test", kind="logistic", include_traffic=False)
    services.router_ab_set(group=group, artifact=challenger, percent=30, actor="test")
    arms = Counter()
    for index in range(300):
        decision = route("auto", HARD_PROMPTS[0], tenant_id=owner.pk, request_id=f"req_{index:04d}")
        arms[decision.record["arm"], decision.router] += 1
    assert set(arms) == {("A", "knn@1"), ("B", "logistic@2")}
    assert 0.22 < arms["B", "logistic@2"] / 300 < 0.38
    # The arm is a function of the request id, so a retried request stays in its arm.
    first = route("auto", HARD_PROMPTS[0], tenant_id=owner.pk, request_id="req_0001").record["arm"]
    assert route("auto", HARD_PROMPTS[0], tenant_id=owner.pk, request_id="req_0001").record["arm"] == first

    services.router_ab_set(group=group, artifact=None, percent=0, actor="test")
    assert route("auto", HARD_PROMPTS[0], tenant_id=owner.pk).record["arm"] is None


def test_ab_percent_outside_0_to_100_is_refused(group, knn):
    with pytest.raises(ValueError, match="between 0 and 100"):
        services.router_ab_set(group=group, artifact=knn, percent=101, actor="test")


def test_bad_max_cost_is_an_openai_style_error(owner, group):
    from core.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as caught:
        route("auto", "hello", tenant_id=owner.pk, max_cost_usd="cheap")
    assert caught.value.param == "max_cost_usd" and caught.value.status == 400
