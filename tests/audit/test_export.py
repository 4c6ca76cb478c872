"""Admin exports: streamed ZIPs of CSV or JSON Lines with a manifest an auditor verifies offline."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_record
from tenants import services
from tenants.models import Membership

pytestmark = pytest.mark.django_db(transaction=True)
EXPORT = reverse("admin:audit_auditevent_export")


def download(response) -> bytes:
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "application/zip"
    return b"".join(response.streaming_content)


def unzip(body: bytes) -> tuple[dict, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(body))
    manifest = json.loads(archive.read("manifest.json"))
    return manifest, archive.read(manifest["file"])


def export(client: Client, **params: object) -> tuple[dict, bytes]:
    return unzip(download(client.get(EXPORT, params)))


def check_offline(verifier, archive_bytes: bytes, tmp_path) -> int:
    path = tmp_path / "export.zip"
    path.write_bytes(archive_bytes)
    return verifier.main([str(path)])


@pytest.fixture
def events(owner, outsider):
    for n in range(30):
        audit_record(actor=f"user:u{n % 3}", action=f"probe.{n % 2}", tenant_id=owner.pk, details={"n": n, "é": "ü"})
    audit_record(actor="key:sk-x", action="auth.failure", outcome=AuditEvent.Outcome.DENIED, tenant_id=outsider.pk)
    audit_record(actor="system", action="platform.thing", ip="10.0.0.1")


@pytest.mark.parametrize("file_format", ["jsonl", "csv"])
def test_a_platform_admin_exports_everything_with_a_manifest_that_verifies(
    admin_client, events, owner, verifier, tmp_path, file_format
):
    total = AuditEvent.objects.count()
    body = download(admin_client.get(EXPORT, {"format": file_format}))
    manifest, _ = unzip(body)
    assert manifest["row_count"] == total and manifest["format"] == file_format
    assert manifest["chains"][f"tenant:{owner.pk}"]["contiguous"] is True
    assert manifest["chains"][f"tenant:{owner.pk}"]["events"] == AuditEvent.objects.filter(tenant_id=owner.pk).count()
    assert check_offline(verifier, body, tmp_path) == 0
    # The export itself is audited, after the bound, so it is not part of its own file.
    exported = AuditEvent.objects.get(action="audit.export")
    assert exported.actor == "user:admin" and exported.details["up_to_id"] == manifest["up_to_id"]
    assert exported.pk > manifest["up_to_id"]


def test_filters_select_tenant_time_actor_action_and_outcome(admin_client, events, owner, outsider):
    manifest, data = export(
        admin_client, **{"format": "jsonl", "tenant": owner.pk, "actor": "user:u1", "action": "probe.1"}
    )
    rows = [json.loads(line) for line in data.splitlines()]
    assert rows and all(
        r["actor"] == "user:u1" and r["action"] == "probe.1" and r["tenant_id"] == owner.pk for r in rows
    )
    assert manifest["chains"][f"tenant:{owner.pk}"]["contiguous"] is False
    manifest, data = export(admin_client, **{"format": "jsonl", "outcome": "denied", "action": "auth."})
    assert [json.loads(line)["tenant_id"] for line in data.splitlines()] == [outsider.pk]
    manifest, _ = export(admin_client, **{"format": "csv", "since": "2999-01-01T00:00"})
    assert manifest["row_count"] == 0


def test_bad_filters_are_shown_on_the_form_not_downloaded(admin_client, events):
    response = admin_client.get(EXPORT, {"format": "xml", "since": "2026-02-01T00:00", "until": "2026-01-01T00:00"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "Select a valid choice" in page
    response = admin_client.get(EXPORT, {"format": "csv", "since": "2026-02-01T00:00", "until": "2026-01-01T00:00"})
    assert "must be before" in response.content.decode()


def test_an_altered_export_fails_offline_verification(admin_client, events, verifier, tmp_path, capsys):
    manifest, original = export(admin_client, format="jsonl")
    forged = original.replace(b'"user:u1"', b'"user:u9"', 1)
    for label, content, stated in [
        ("edited file", forged, manifest),
        ("edited file, hash fixed", forged, manifest | {"sha256": hashlib.sha256(forged).hexdigest()}),
        ("row dropped", b"\n".join(original.splitlines()[1:]) + b"\n", manifest),
    ]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            out.writestr(manifest["file"], content)
            out.writestr("manifest.json", json.dumps(stated))
        assert check_offline(verifier, buffer.getvalue(), tmp_path) == 1, label
    assert "altered" in capsys.readouterr().out


@pytest.fixture
def member(owner):
    def login(role: str) -> Client:
        user = User.objects.create_user(role, password="pw-for-tests-only")
        services.membership_save(membership=Membership(user=user, tenant=owner, role=role), actor="test")
        client = Client()
        assert client.login(username=role, password="pw-for-tests-only")
        return client

    return login


def test_an_auditor_exports_only_their_tenants_events_and_a_viewer_cannot(member, events, owner, outsider):
    auditor = member("auditor")
    changelist = auditor.get(reverse("admin:audit_auditevent_changelist")).content.decode()
    assert EXPORT in changelist
    _, data = unzip(download(auditor.get(EXPORT, {"format": "jsonl"})))
    tenants = {json.loads(line)["tenant_id"] for line in data.splitlines()}
    assert tenants == {owner.pk}
    refused = auditor.get(EXPORT, {"format": "jsonl", "tenant": outsider.pk})
    assert refused["Content-Type"].startswith("text/html") and "not one whose events" in refused.content.decode()
    assert member("viewer").get(EXPORT).status_code == 403
    tenant_admin = member("tenant_admin")
    assert tenant_admin.get(EXPORT).status_code == 403
    assert EXPORT not in tenant_admin.get(reverse("admin:audit_auditevent_changelist")).content.decode()


def test_the_admin_action_exports_the_selected_events(admin_client, events, verifier, tmp_path):
    chosen = list(AuditEvent.objects.filter(action="probe.0").values_list("pk", flat=True)[:4])
    response = admin_client.post(
        reverse("admin:audit_auditevent_changelist"), {"action": "export_selected_csv", "_selected_action": chosen}
    )
    body = download(response)
    manifest, _ = unzip(body)
    assert manifest["row_count"] == 4 and manifest["format"] == "csv"
    assert check_offline(verifier, body, tmp_path) == 0
    assert AuditEvent.objects.get(action="audit.export").details["selected"] == 4


async def test_under_asgi_the_download_is_pulled_one_chunk_at_a_time():
    from django.core.handlers.asgi import ASGIRequest

    from audit.streaming import streaming_download

    produced: list[int] = []

    def chunks():
        for n in range(3):
            produced.append(n)
            yield b"chunk%d" % n

    request = ASGIRequest(
        {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}, io.BytesIO()
    )
    response = streaming_download(request, chunks(), filename="f.zip", content_type="application/zip")
    assert response.is_async
    stream = aiter(response.streaming_content)
    assert await anext(stream) == b"chunk0" and produced == [0]
    assert [part async for part in stream] == [b"chunk1", b"chunk2"]
