"""One rule says which litellm params are credentials: litellm's own secret params and anything named like one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.credentials import is_secret_param, params_merge, params_split, secret_values

# Credential params litellm 1.102 reads (litellm/types/router.py CredentialLiteLLMParams, the provider configs).
LITELLM_SECRETS = [
    "api_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_web_identity_token",
    "vertex_credentials",
    "vertex_ai_credentials",
    "client_secret",
    "azure_ad_token",
    "azure_client_secret",
    "azure_password",
    "watsonx_credentials",
    "wx_credentials",
    "apikey",
    "token",
    "zen_api_key",
    "oci_key",
    "gigachat_access_token",
    "huggingface_token",
    "replicate_api_token",
    "langfuse_secret_key",
]
# Names the pattern catches so a param litellm adds later is covered too, and secret-looking headers.
PATTERN_SECRETS = [
    "databricks_api_key",
    "snowflake_jwt",
    "some_new_provider_secret",
    "my_password",
    "gcp_service_credentials",
    "Authorization",
    "Proxy-Authorization",
    "api-key",
    "X-Api-Key",
    "x-goog-api-key",
    "Ocp-Apim-Subscription-Key",
    "X-Amz-Security-Token",
    "Cookie",
    "X-ApiKey",
]
PLAIN = [
    "max_tokens",
    "max_completion_tokens",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "bos_token",
    "eos_token",
    "prompt_cache_key",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
    "aws_role_name",
    "aws_session_name",
    "s3_encryption_key_id",
    "vertex_project",
    "vertex_location",
    "api_version",
    "api_base",
    "organization",
    "timeout",
    "stream_timeout",
    "weight",
    "rpm",
    "tpm",
    "tenant_id",
    "client_id",
    "azure_username",
    "litellm_credential_name",
    "oci_key_file",
    "subject_token_type",
    "extra_headers",
    "Content-Type",
    "X-Trace-Id",
    "anthropic-version",
]


@pytest.mark.parametrize("name", LITELLM_SECRETS + PATTERN_SECRETS)
def test_credential_params_and_headers_are_secret(name: str) -> None:
    assert is_secret_param(name)


@pytest.mark.parametrize("name", PLAIN)
def test_token_counts_prices_regions_and_ids_are_plain(name: str) -> None:
    assert not is_secret_param(name)


def test_split_moves_credentials_and_secret_headers_and_keeps_the_rest() -> None:
    params = {
        "aws_secret_access_key": "s3cr3t",
        "aws_region_name": "eu-west-1",
        "max_tokens": 100,
        "extra_headers": {"api-key": "hdr", "X-Trace": "1"},
        "headers": {"Authorization": "Bearer t"},
        "aws_session_token": None,
    }
    plain, secret = params_split(params)
    assert plain == {"aws_region_name": "eu-west-1", "max_tokens": 100, "extra_headers": {"X-Trace": "1"}}
    assert secret == {
        "aws_secret_access_key": "s3cr3t",
        "extra_headers": {"api-key": "hdr"},
        "headers": {"Authorization": "Bearer t"},
    }
    assert sorted(secret_values(secret)) == ["aws_secret_access_key", "extra_headers.api-key", "headers.Authorization"]
    assert params_merge(plain, secret) == {k: v for k, v in params.items() if v is not None}


def test_a_credential_given_as_a_mapping_is_kept_and_replaced_whole() -> None:
    plain, secret = params_split({"vertex_credentials": {"type": "service_account", "private_key": "pem"}})
    assert plain == {} and secret == {"vertex_credentials": {"type": "service_account", "private_key": "pem"}}
    assert params_merge(secret, {"vertex_credentials": {"type": "other"}}) == {"vertex_credentials": {"type": "other"}}


def test_merge_with_null_removes_one_secret_and_keeps_the_others() -> None:
    stored = {"aws_secret_access_key": "a", "aws_session_token": "b", "extra_headers": {"api-key": "c"}}
    assert params_merge(stored, {"aws_session_token": None, "extra_headers": {"api-key": None}}) == {
        "aws_secret_access_key": "a"
    }
    assert stored == {"aws_secret_access_key": "a", "aws_session_token": "b", "extra_headers": {"api-key": "c"}}


NAMES = st.sampled_from([*LITELLM_SECRETS[:6], *PLAIN[:8], "extra_headers", "headers", "extra_body"])
HEADERS = st.dictionaries(
    st.sampled_from(["api-key", "Authorization", "X-Trace", "Content-Type", "x-api-key", "X-Team"]),
    st.text(max_size=8),
    max_size=4,
)
PARAMS = st.dictionaries(NAMES, st.one_of(st.text(max_size=8), st.integers(), st.booleans(), HEADERS), max_size=8)


# Generation is cheap but the machine may be busy: the too_slow check would fail on a slow CPU, not on the code.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PARAMS)
def test_split_then_merge_gives_back_every_param_and_leaves_no_credential_plain(params: dict[str, Any]) -> None:
    plain, secret = params_split(params)
    assert params_merge(plain, secret) == params

    def names(document: dict[str, Any]) -> list[str]:
        found = []
        for name, value in document.items():
            found.append(name)
            if isinstance(value, dict):
                found.extend(names(value))
        return found

    assert not any(is_secret_param(name) for name in names(plain))
