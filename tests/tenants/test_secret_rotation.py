"""Secret rotation: provider credentials re-encrypted under live API traffic (the openai SDK), the old
key removed afterwards; API keys past their maximum age get a successor, a grace period, then revocation."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import openai
import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from routing.models import ModelDeployment
from tenants import rotation
from tenants.models import ApiKey, Quota
from tests import live

OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def stored_ciphertexts() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT api_key FROM {ModelDeployment._meta.db_table} WHERE api_key <> ''")
        return [row[0] for row in cursor.fetchall()]


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Traffic:
    """Threads sending chat completions through the SDK until stopped; every outcome is counted."""

    def __init__(self, base_url: str, secret: str, threads: int = 3) -> None:
        self.client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0, timeout=30)
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                completion = self.client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
                assert completion.choices[0].message.content
                with self.lock:
                    self.ok += 1
            except Exception as exc:
                with self.lock:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.timeout(240)
def test_reencryption_under_live_traffic_loses_no_request_and_the_old_key_can_go(
    settings, tmp_path: Path, owner, owner_key, deployment_factory
) -> None:
    settings.FERNET_KEYS = [OLD_KEY]
    deployment_factory()  # the credential every request decrypts
    # Many more stored credentials, so re-encryption takes many batches while requests flow.
    ModelDeployment.objects.bulk_create(
        ModelDeployment(model_name=f"spare-{n}", litellm_model="openai/spare", api_key=f"sk-spare-{n}")
        for n in range(300)
    )
    assert all(Fernet(OLD_KEY.encode()).decrypt(token.encode()) for token in stored_ciphertexts())

    # Step 1 of the runbook: every process gets the new key first in the ring (old one still there).
    settings.FERNET_KEYS = [NEW_KEY, OLD_KEY]
    ring = {"FERNET_KEYS": f"{NEW_KEY},{OLD_KEY}", "DEPLOYMENT_CACHE_TTL": "0"}
    with live.daphne_server(tmp_path, **ring) as server, Traffic(server.url, owner_key.secret) as traffic:
        wait_for(lambda: traffic.ok >= 3)
        assert sum(rotation.secrets_pending().values()) == 301
        rotated = rotation.secrets_reencrypt(actor="test", batch_size=10)
        assert rotated["routing.ModelDeployment.api_key"] == 301
        # Idempotent: nothing left to do on a second pass.
        assert rotation.secrets_reencrypt(actor="test", batch_size=10)["routing.ModelDeployment.api_key"] == 0
        served_during = traffic.ok
        wait_for(lambda: traffic.ok >= served_during + 3)
    assert traffic.failures == []
    assert traffic.ok > 0

    # Every stored value is under the new key alone, so the old key can be removed.
    assert rotation.secrets_pending()["routing.ModelDeployment.api_key"] == 0
    for token in stored_ciphertexts():
        Fernet(NEW_KEY.encode()).decrypt(token.encode())
    settings.FERNET_KEYS = [NEW_KEY]
    assert ModelDeployment.objects.get(model_name="spare-7").api_key == "sk-spare-7"
    with live.daphne_server(tmp_path, FERNET_KEYS=NEW_KEY, DEPLOYMENT_CACHE_TTL="0") as server:
        with Traffic(server.url, owner_key.secret, threads=1) as after:
            wait_for(lambda: after.ok >= 5 or bool(after.failures))
    assert after.failures == [] and after.ok >= 5
    event = AuditEvent.objects.get(action="secret.reencrypt")
    assert event.target == "field:routing.ModelDeployment.api_key" and event.details["rows"] == 301


def test_every_encrypted_field_of_every_app_is_found() -> None:
    labels = {f"{model._meta.label}.{field.name}" for model, field in rotation.encrypted_fields()}
    assert {"routing.ModelDeployment.api_key", "tenants.ApiKey.pending_secret"} <= labels


def age(key: ApiKey, days: int) -> None:
    ApiKey.objects.filter(pk=key.pk).update(created_at=timezone.now() - dt.timedelta(days=days))


def test_a_key_past_its_maximum_age_gets_a_successor_then_is_revoked_after_grace(
    settings, owner, outsider, key_factory, server, deployment_factory
) -> None:
    settings.API_KEY_ROTATION_GRACE_HOURS = 2
    deployment_factory()
    owner.key_max_age_days = 30
    owner.save()
    old = key_factory(owner, "backend", scopes=["chat"])
    young = key_factory(owner, "fresh")
    foreign = key_factory(outsider, "no max age")
    age(old.key, 31)
    age(foreign.key, 400)
    Quota.objects.create(api_key=old.key, rpm_limit=50)
    assert list(rotation.api_keys_rotation_due()) == [old.key]

    report = rotation.secret_rotate(actor="system:test")
    assert report.rotated == [old.key.prefix]
    new = ApiKey.objects.get(rotated_from=old.key)
    assert new.tenant == owner and new.name == "backend" and new.scopes == ["chat"]
    assert Quota.objects.get(api_key=new).rpm_limit == 50
    assert new.pending_secret.startswith("sk-")  # held, encrypted, for a tenant admin to collect
    old.key.refresh_from_db()
    assert old.key.expires_at is not None
    assert dt.timedelta(hours=1.9) < old.key.expires_at - timezone.now() <= dt.timedelta(hours=2)
    assert young.key.pk not in {k.pk for k in rotation.api_keys_rotation_due()}

    # During the grace period both secrets work.
    for secret in (old.secret, new.pending_secret):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])

    # A second pass does nothing new (idempotent).
    assert rotation.secret_rotate(actor="system:test").rotated == []
    assert ApiKey.objects.filter(rotated_from=old.key).count() == 1

    ApiKey.objects.filter(pk=old.key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert rotation.secret_rotate(actor="system:test").retired == 1
    old.key.refresh_from_db()
    assert old.key.status == ApiKey.Status.REVOKED
    actions = set(AuditEvent.objects.filter(target=f"api_key:{old.key.prefix}").values_list("action", flat=True))
    assert {"api_key.rotate", "api_key.revoke"} <= actions
    rotate = AuditEvent.objects.get(action="api_key.rotate")
    assert rotate.details["successor"] == new.prefix
    assert new.pending_secret not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_secret_rotate_command_checks_and_runs(settings, owner, key_factory) -> None:
    settings.FERNET_KEYS = [OLD_KEY]
    ModelDeployment.objects.create(model_name="m", litellm_model="openai/m", api_key="sk-provider")
    settings.FERNET_KEYS = [NEW_KEY, OLD_KEY]
    with pytest.raises(CommandError, match="rotation is due"):
        call_command("secret_rotate", "--check")
    call_command("secret_rotate")
    call_command("secret_rotate", "--check")  # nothing due any more


def test_the_scheduled_task_claims_its_period_and_rotates(settings, owner, key_factory) -> None:
    from tenants.tasks import secret_rotate

    owner.key_max_age_days = 1
    owner.save()
    issued = key_factory(owner)
    age(issued.key, 2)
    headers = {"periodic_job": "secret-rotate", "period_start": "2026-01-01T00:00:00+00:00", "fence": 1}
    assert "rotated 1 API key" in secret_rotate.apply(headers=headers).result
    assert secret_rotate.apply(headers=headers).result is None  # same period: claimed already
