"""Provider credentials in litellm_params: encrypted at rest, named but never valued in the audit trail,
re-encrypted by key rotation, moved out of plain text by the migration, and still handed to litellm."""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.models import AuditEvent
from routing import upstream as provider_calls
from routing.models import ModelDeployment
from routing.selectors import DeploymentTarget
from routing.services import deployment_delete, deployment_save
from tenants import rotation
from tests.routing.secret_params import NAMED, lookup, params_with, raw_audit, raw_deployments


def bedrock(**extra: Any) -> ModelDeployment:
    return ModelDeployment(model_name="claude", litellm_model="bedrock/anthropic.claude-3", extra_params=extra)


@pytest.mark.parametrize("name", NAMED)
def test_a_credential_param_saved_through_the_service_is_encrypted_and_only_named_in_the_audit(db, name):
    value = f"plaintext-{name}-0451"
    deployment_save(deployment=bedrock(**params_with(name, value), aws_region_name="eu-west-1"), actor="test")

    raw = raw_deployments()
    assert value not in raw
    assert "eu-west-1" in raw  # the raw read does see plain params
    assert value not in raw_audit()
    event = AuditEvent.objects.get(action="deployment.create")
    assert event.details["changes"][f"secret_params.{name}"] == {"before": "(empty)", "after": "(set)"}
    assert event.details["changes"]["secret_params"]["after"] == [name]
    deployment = ModelDeployment.objects.get()
    assert lookup(deployment.secret_params, name) == value
    assert "aws_secret_access_key" not in deployment.extra_params and "api-key" not in str(deployment.extra_params)
    target = DeploymentTarget.from_model(deployment)
    assert lookup(target.extra_params, name) == value
    assert target.extra_params["aws_region_name"] == "eu-west-1"
    assert value not in repr(target)


def test_changed_and_removed_credentials_are_audited_by_name_and_deletion_names_them(db):
    deployment = deployment_save(
        deployment=bedrock(aws_secret_access_key="first-secret-0451", aws_session_token="first-token-0451"),
        actor="test",
    )
    deployment = ModelDeployment.objects.get(pk=deployment.pk)
    deployment.secret_params = {"aws_secret_access_key": "second-secret-0451"}
    deployment_save(deployment=deployment, actor="test")
    change = AuditEvent.objects.get(action="deployment.change")
    assert change.details["changes"]["secret_params.aws_secret_access_key"] == {"before": "(set)", "after": "(changed)"}
    assert change.details["changes"]["secret_params.aws_session_token"] == {"before": "(set)", "after": "(removed)"}

    deployment_save(deployment=ModelDeployment.objects.get(pk=deployment.pk), actor="test")
    assert AuditEvent.objects.filter(action="deployment.change").count() == 1  # saved as stored: nothing to record

    deployment_delete(deployment=ModelDeployment.objects.get(pk=deployment.pk), actor="test")
    deleted = AuditEvent.objects.get(action="deployment.delete")
    assert deleted.details["before"]["secret_params"] == ["aws_secret_access_key"]
    audit = raw_audit()
    for value in ("first-secret-0451", "first-token-0451", "second-secret-0451"):
        assert value not in audit


def test_a_credential_written_around_the_service_is_moved_on_the_next_save_and_never_audited(db):
    # bulk_create bypasses the service (as a script or an old row would).
    ModelDeployment.objects.bulk_create([bedrock(aws_secret_access_key="bypass-secret-0451", rpm=10)])
    deployment = ModelDeployment.objects.get()
    deployment.enabled = False
    deployment_save(deployment=deployment, actor="test")
    assert "bypass-secret-0451" not in raw_deployments()
    assert "bypass-secret-0451" not in raw_audit()
    assert ModelDeployment.objects.get().secret_params == {"aws_secret_access_key": "bypass-secret-0451"}


def test_rotating_fernet_keys_reencrypts_secret_params(db, settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FERNET_KEYS = [old_key]
    credentials = {"type": "service_account", "private_key": "pem-0451"}
    deployment_save(deployment=bedrock(vertex_credentials=credentials), actor="test")

    settings.FERNET_KEYS = [new_key, old_key]
    assert rotation.secrets_pending()["routing.ModelDeployment.secret_params"] == 1
    assert rotation.secrets_reencrypt(actor="test")["routing.ModelDeployment.secret_params"] == 1
    assert rotation.secrets_pending()["routing.ModelDeployment.secret_params"] == 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT secret_params FROM {ModelDeployment._meta.db_table}")
        (token,) = cursor.fetchone()
    assert json.loads(Fernet(new_key.encode()).decrypt(token.encode())) == {"vertex_credentials": credentials}

    settings.FERNET_KEYS = [new_key]  # the old key can go
    assert ModelDeployment.objects.get().secret_params == {"vertex_credentials": credentials}
    event = AuditEvent.objects.get(action="secret.reencrypt", target="field:routing.ModelDeployment.secret_params")
    assert event.details["rows"] == 1
    assert "pem-0451" not in raw_audit()


BEFORE, AFTER = ("routing", "0004_ml_router"), ("routing", "0005_deployment_secret_params")


def test_the_migration_moves_plaintext_credentials_out_of_extra_params_and_back(transactional_db):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([BEFORE])
        old = MigrationExecutor(connection).loader.project_state([BEFORE]).apps.get_model("routing", "ModelDeployment")
        legacy = {
            "aws_secret_access_key": "legacy-secret-0451",
            "aws_region_name": "eu-west-1",
            "extra_headers": {"api-key": "legacy-header-0451", "X-Team": "search"},
        }
        old.objects.create(model_name="claude", litellm_model="bedrock/anthropic.claude-3", extra_params=legacy)
        assert "legacy-secret-0451" in raw_deployments()

        MigrationExecutor(connection).migrate([AFTER])
        raw = raw_deployments()
        assert "legacy-secret-0451" not in raw and "legacy-header-0451" not in raw and "eu-west-1" in raw
        deployment = ModelDeployment.objects.get()
        assert deployment.extra_params == {"aws_region_name": "eu-west-1", "extra_headers": {"X-Team": "search"}}
        assert deployment.secret_params == {
            "aws_secret_access_key": "legacy-secret-0451",
            "extra_headers": {"api-key": "legacy-header-0451"},
        }

        MigrationExecutor(connection).migrate([BEFORE])
        restored = old.objects.get()
        assert restored.extra_params == legacy
    finally:
        MigrationExecutor(connection).migrate(latest)


class LitellmSpy:
    """The real litellm module, with the keyword arguments of each call recorded on the way through."""

    def __init__(self, litellm: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self.module = litellm

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.module, name)

        async def call(**kwargs: Any) -> Any:
            self.calls.append(kwargs)
            return await real(**kwargs)

        return call if name in ("acompletion", "atext_completion", "aembedding") else real


def test_litellm_receives_every_decrypted_credential(db, upstream, monkeypatch):
    secrets = {name: f"plaintext-{name}-0451" for name in NAMED if not name.startswith("extra_headers.")}
    deployment_save(
        deployment=ModelDeployment(
            model_name="via-litellm",
            litellm_model="openai/gpt-4o-mini",
            api_base=upstream.url,
            api_key="sk-provider-0451",
            extra_params={
                "passthrough": False,
                **secrets,
                "extra_headers": {"api-key": "header-0451", "X-Team": "search"},
            },
        ),
        actor="test",
    )
    assert "plaintext-" not in raw_deployments()
    target = DeploymentTarget.from_model(ModelDeployment.objects.get(model_name="via-litellm"))
    spy = LitellmSpy(asyncio.run(upstream_litellm()))
    provider_calls.litellm_module.replace(spy)

    completion = asyncio.run(
        provider_calls.complete(target, {"messages": [{"role": "user", "content": "hi [[fake chunks=2]]"}]})
    )

    assert json.loads(completion.body)["choices"][0]["message"]["content"] == "Hello from"
    (kwargs,) = spy.calls
    assert kwargs["api_key"] == "sk-provider-0451"
    for name, value in secrets.items():
        assert kwargs[name] == value
    assert kwargs["extra_headers"]["api-key"] == "header-0451" and kwargs["extra_headers"]["X-Team"] == "search"


async def upstream_litellm() -> types.ModuleType:
    return await provider_calls._litellm()


@pytest.mark.parametrize("passthrough", [False, True], ids=["litellm", "relay"])
def test_a_secret_header_reaches_the_provider(server, owner_key, deployment_factory, passthrough):
    deployment_factory(
        "header-model",
        "openai/gpt-4o-mini",
        extra_params={"passthrough": passthrough, "extra_headers": {"api-key": "header-secret-0451"}},
    )
    assert "header-secret-0451" not in raw_deployments()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=owner_key.secret, max_retries=0)
    completion = client.chat.completions.create(
        model="header-model", messages=[{"role": "user", "content": "[[fake echo_header=api-key chunks=1]]"}]
    )
    assert completion.choices[0].message.content == "header-secret-0451"
