"""Training from the platform's own traffic: samples keep only a hash unless the tenant opts in,
feedback turns into labels, and the management command and task produce artifacts."""

from __future__ import annotations

import io

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.utils import timezone

from routing.ml import services
from routing.ml.models import RequestFeedback, RouterArtifact, RouterSample
from routing.ml.samples import sample_writer
from routing.ml.tasks import router_train_task
from routing.ml.training import traffic_rows
from routing.smart import smart_route

NICHE = "zqxv frobnicate the quarterly wibble ledger"


def routed(tenant_id: int, text: str, request_id: str) -> None:
    payload = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    async_to_sync(smart_route)(model="auto", payload=payload, tenant_id=tenant_id, request_id=request_id)


def test_samples_keep_a_hash_only_unless_the_tenant_opts_in(owner, outsider, group_factory):
    group_factory(router_kind="rules")
    services.tenant_routing_data_save(tenant_id=owner.pk, keep_prompt_text=True, actor="test")
    routed(owner.pk, "secret plan for owner", "req_optin")
    routed(outsider.pk, "secret plan for outsider", "req_hashonly")
    sample_writer.flush_now()
    kept, hashed = RouterSample.objects.get(request_id="req_optin"), RouterSample.objects.get(request_id="req_hashonly")
    assert kept.prompt_text == "secret plan for owner"
    assert hashed.prompt_text == "" and len(hashed.prompt_sha256) == 64
    assert "secret plan" not in str(hashed.record)
    assert hashed.record["router"] == "rules" and hashed.served_model == "weak-model"


def _traffic(group, tenant, count: int, *, served: str, score: float) -> None:
    for index in range(count):
        request_id = f"req_{served[:4]}{score}{index:03d}"
        RouterSample.objects.create(
            request_id=request_id,
            created_at=timezone.now(),
            tenant=tenant,
            group=group,
            prompt_sha256="0" * 64,
            prompt_text=f"{NICHE} number {index}",
            router="knn@1",
            chosen_model=served,
            served_model=served,
        )
        RequestFeedback.objects.create(request_id=request_id, tenant=tenant, score=score, source="api")


def test_feedback_on_opted_in_traffic_becomes_labels(owner, group_factory):
    group = group_factory()
    _traffic(group, owner, 3, served="weak-model", score=0.1)  # weak failed: strong needed
    _traffic(group, owner, 2, served="strong-model", score=0.2)  # strong failed too: weak is as good
    RouterSample.objects.create(
        request_id="req_nofeedback",
        created_at=timezone.now(),
        group=group,
        prompt_sha256="0" * 64,
        prompt_text="no feedback",
        router="knn@1",
        chosen_model="weak-model",
        served_model="weak-model",
    )
    texts, labels, weights = traffic_rows(group)
    assert len(texts) == 5
    assert sorted(labels.tolist()) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert weights.tolist() == [1.0] * 5


def test_router_trained_on_traffic_learns_what_the_table_never_saw(owner, group_factory):
    group = group_factory(strong_share=0.5)
    before = services.router_train(group=group, actor="test", kind="knn", include_traffic=False)
    _traffic(group, owner, 40, served="weak-model", score=0.0)
    after = services.router_train(group=group, actor="test", kind="knn")
    assert (before.traffic_rows, after.traffic_rows) == (0, 40)
    assert after.trained_rows > before.trained_rows

    from routing.ml.selectors import artifact_load_sync

    probe = f"{NICHE} number 999"
    assert artifact_load_sync(after.pk).score(probe) > 0.9 > artifact_load_sync(before.pk).score(probe)


def test_management_command_trains_promotes_and_prints_the_evaluation(group_factory):
    group = group_factory(router_kind="logistic")
    out = io.StringIO()
    call_command("router_train", "auto", "--no-traffic", "--promote", stdout=out)
    text = out.getvalue()
    assert "trained auto logistic@1" in text and "promoted logistic@1" in text
    assert "quality recovered" in text and "100%" in text
    group.refresh_from_db()
    assert group.active_artifact.label == "logistic@1"
    with pytest.raises(CommandError, match="no smart group"):
        call_command("router_train", "nope")


def test_training_task_returns_the_new_artifact(group_factory):
    group = group_factory()
    artifact_id = router_train_task.apply(args=(group.pk,), kwargs={"actor": "beat", "include_traffic": False}).get()
    artifact = RouterArtifact.objects.get(pk=artifact_id)
    assert (artifact.kind, artifact.created_by) == ("knn", "beat")
