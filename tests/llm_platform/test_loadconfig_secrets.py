"""`loadconfig`: credential params of a LiteLLM config (literal or os.environ/) are stored encrypted, audited by
name only, compared decrypted so the same file changes nothing, and reach the routing target."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from routing.models import ModelDeployment
from routing.selectors import DeploymentTarget
from tests.routing.secret_params import raw_audit, raw_deployments

CONFIG = """
model_list:
  - model_name: claude
    litellm_params:
      model: bedrock/anthropic.claude-3
      aws_access_key_id: os.environ/TEST_AWS_KEY_ID
      aws_secret_access_key: os.environ/TEST_AWS_SECRET
      aws_session_token: session-literal-0451
      aws_region_name: eu-west-1
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o
      api_base: https://example-0451.openai.azure.com
      api_version: "2024-06-01"
      azure_ad_token: ad-token-literal-0451
      client_secret: client-secret-literal-0451
      azure_client_secret: os.environ/TEST_AZURE_SECRET
      extra_headers:
        api-key: os.environ/TEST_AZURE_HEADER
        X-Team: search
  - model_name: gemini
    litellm_params:
      model: vertex_ai/gemini-1.5-pro
      vertex_project: my-project
      vertex_credentials: '{"type": "service_account", "private_key": "vertex-pem-0451"}'
"""

ENVIRONMENT = {
    "TEST_AWS_KEY_ID": "AKIA-env-0451",
    "TEST_AWS_SECRET": "aws-secret-env-0451",
    "TEST_AZURE_SECRET": "azure-secret-env-0451",
    "TEST_AZURE_HEADER": "azure-header-env-0451",
}
SECRETS = [*ENVIRONMENT.values(), "session-literal-0451", "ad-token-literal-0451", "client-secret-literal-0451"]
SECRETS.append("vertex-pem-0451")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return ENVIRONMENT


def load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("loadconfig", str(path), stdout=out, stderr=StringIO())
    return out.getvalue()


def test_credentials_from_the_config_are_encrypted_audited_by_name_and_reach_the_target(db, tmp_path, environment):
    load(tmp_path, CONFIG)

    raw = raw_deployments()
    assert not [value for value in SECRETS if value in raw]
    assert "eu-west-1" in raw and "search" in raw
    assert not [value for value in SECRETS if value in raw_audit()]

    claude = ModelDeployment.objects.get(model_name="claude")
    assert claude.extra_params == {"aws_region_name": "eu-west-1"}
    assert claude.secret_params == {
        "aws_access_key_id": "AKIA-env-0451",
        "aws_secret_access_key": "aws-secret-env-0451",
        "aws_session_token": "session-literal-0451",
    }
    azure = ModelDeployment.objects.get(model_name="gpt-4o")
    assert azure.extra_params == {"api_version": "2024-06-01", "extra_headers": {"X-Team": "search"}}
    assert azure.secret_params["extra_headers"] == {"api-key": "azure-header-env-0451"}
    target = DeploymentTarget.from_model(azure)
    assert target.extra_params["extra_headers"] == {"X-Team": "search", "api-key": "azure-header-env-0451"}
    assert target.extra_params["azure_client_secret"] == "azure-secret-env-0451"
    assert "vertex-pem-0451" in ModelDeployment.objects.get(model_name="gemini").secret_params["vertex_credentials"]

    created = AuditEvent.objects.get(action="deployment.create", target__endswith=":gpt-4o")
    assert created.details["changes"]["secret_params"]["after"] == [
        "azure_ad_token",
        "azure_client_secret",
        "client_secret",
        "extra_headers.api-key",
    ]


def test_loading_the_same_config_again_changes_and_audits_nothing(db, tmp_path, environment):
    load(tmp_path, CONFIG)
    events = AuditEvent.objects.count()
    out = load(tmp_path, CONFIG)
    assert "0 created, 0 updated" in out
    assert AuditEvent.objects.count() == events


def test_a_changed_or_dropped_credential_is_updated_and_audited_by_name(db, tmp_path, environment, monkeypatch):
    load(tmp_path, CONFIG)
    monkeypatch.setenv("TEST_AWS_SECRET", "aws-secret-rotated-0451")
    out = load(tmp_path, CONFIG.replace("      aws_session_token: session-literal-0451\n", ""))
    assert "updated   deployment claude" in out and "1 updated" in out
    change = AuditEvent.objects.get(action="deployment.change")
    assert change.details["changes"]["secret_params.aws_secret_access_key"] == {"before": "(set)", "after": "(changed)"}
    assert change.details["changes"]["secret_params.aws_session_token"] == {"before": "(set)", "after": "(removed)"}
    assert ModelDeployment.objects.get(model_name="claude").secret_params["aws_secret_access_key"] == (
        "aws-secret-rotated-0451"
    )
    assert "aws-secret-rotated-0451" not in raw_audit() and "aws-secret-rotated-0451" not in raw_deployments()
