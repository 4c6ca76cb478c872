"""Which litellm params are credentials: the one rule every path (service, admin, loadconfig, migration) uses."""

from __future__ import annotations

from typing import Any

# litellm 1.x's own credential params (litellm.types.router.CredentialLiteLLMParams, the
# provider configs under litellm.llms, the logging callbacks' keys). Listed so the names
# litellm documents are covered whatever the pattern below says.
KNOWN_SECRET_PARAMS = frozenset(
    {
        "api_key",
        "apikey",
        "token",
        "password",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        # AWS (Bedrock, SageMaker): the key id is half of the credential pair.
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_web_identity_token",
        # Azure
        "azure_ad_token",
        "azure_client_secret",
        "azure_password",
        "azure_api_key",
        "azure_key",
        # Google
        "vertex_credentials",
        "vertex_ai_credentials",
        "gemini_api_key",
        # IBM watsonx
        "watsonx_token",
        "watsonx_credentials",
        "wx_credentials",
        "zen_api_key",
        # Oracle OCI (the private key itself; the key file is a path)
        "oci_key",
        # Others litellm reads by name
        "gigachat_access_token",
        "gigachat_credentials",
        "huggingface_key",
        "huggingface_token",
        "replicate_key",
        "replicate_api_token",
        "databricks_key",
        "valkey_password",
        # Logging callbacks that take a key per request
        "langfuse_public_key",
        "langfuse_secret",
        "langfuse_secret_key",
        "langsmith_api_key",
        "humanloop_api_key",
        "arize_api_key",
        "arize_space_key",
        "posthog_api_key",
        "wandb_api_key",
        "dd_api_key",
        "newrelic_api_key",
    }
)

# Names the pattern would catch that are not secrets (special tokens of a tokenizer, cache keys).
KNOWN_PLAIN_PARAMS = frozenset(
    {"bos_token", "eos_token", "pad_token", "cache_key", "preset_cache_key", "prompt_cache_key"}
)

# A name is a credential when one of its words is one of these, or is "key" ...
SECRET_WORDS = frozenset(
    {
        "secret",
        "secrets",
        "token",
        "password",
        "passwd",
        "passphrase",
        "credential",
        "credentials",
        "apikey",
        "authorization",
        "cookie",
        "jwt",
    }
)
# ... or contains one of these run together ("X-ApiKey", "accesstoken").
SECRET_FRAGMENTS = ("secret", "password", "passwd", "credential", "apikey", "accesstoken", "authtoken", "privatekey")
# ... unless it prices a token or its last word says it names, counts or points at something.
PLAIN_WORDS = frozenset({"cost"})
PLAIN_LAST_WORDS = frozenset({"id", "ids", "count", "limit", "type", "url", "endpoint", "name", "file", "path"})


def is_secret_param(name: str) -> bool:
    """Whether a litellm param (or an HTTP header) of this name holds a credential.

    Case and ``-``/``_`` do not matter, so header names follow the same rule. Words are
    what ``_`` separates: ``max_tokens`` has the word ``tokens``, not ``token``, and is plain.
    """
    key = name.lower().replace("-", "_")
    if key in KNOWN_SECRET_PARAMS:
        return True
    if key in KNOWN_PLAIN_PARAMS:
        return False
    words = [word for word in key.split("_") if word]
    if not words or words[-1] in PLAIN_LAST_WORDS or PLAIN_WORDS.intersection(words):
        return False
    if "key" in words or SECRET_WORDS.intersection(words):
        return True
    return any(fragment in key for fragment in SECRET_FRAGMENTS)


def params_split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` as (plain, secret): credential-named entries move to the second dict.

    Mappings under a plain name (``extra_headers``, ``headers``, ``extra_body`` ...) are
    split the same way, so ``{"extra_headers": {"api-key": "…", "X-Trace": "1"}}`` keeps
    ``X-Trace`` plain and moves ``api-key``; a mapping left empty by the move is dropped
    (``params_merge`` brings it back). A credential set to null is no credential: dropped.
    """
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in params.items():
        if is_secret_param(name):
            if value is not None:
                secret[name] = value
        elif isinstance(value, dict) and value:
            inner_plain, inner_secret = params_split(value)
            if inner_plain or not inner_secret:
                plain[name] = inner_plain
            if inner_secret:
                secret[name] = inner_secret
        else:
            plain[name] = value
    return plain, secret


def params_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` laid over it, mapping by mapping (a new dict; neither is changed).

    A null in ``overlay`` removes that entry (how the admin removes one stored secret);
    a credential's own value (``vertex_credentials`` as a mapping) is replaced whole.
    """
    merged = dict(base)
    for name, value in overlay.items():
        if value is None:
            merged.pop(name, None)
        elif isinstance(value, dict) and isinstance(merged.get(name), dict) and not is_secret_param(name):
            inner = params_merge(merged[name], value)
            if inner:
                merged[name] = inner
            else:
                merged.pop(name)
        else:
            merged[name] = value
    return merged


def secret_values(secret: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The secret dict flattened to dotted names, so two versions can be compared value by value."""
    flat: dict[str, Any] = {}
    for name, value in secret.items():
        if isinstance(value, dict) and not is_secret_param(name):
            flat.update(secret_values(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
