"""Encryption at rest for credentials (provider API keys, upstream tokens) with a key ring."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models


def _key_ring() -> MultiFernet:
    return _key_ring_of(tuple(settings.FERNET_KEYS))


@lru_cache(maxsize=4)
def _key_ring_of(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FERNET_KEYS must be a comma-separated list of Fernet keys "
            '(make one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
        ) from exc


def secret_encrypt(plaintext: str) -> str:
    return _key_ring().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _key_ring().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored credential cannot be decrypted with any key in FERNET_KEYS; "
            "the key that encrypted it was removed from the ring."
        ) from exc


def token_is_current(token: str) -> bool:
    """Whether a stored ciphertext is under the first (encrypting) key of the ring."""
    try:
        Fernet(settings.FERNET_KEYS[0]).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def token_rotate(token: str) -> str:
    """Re-encrypt a stored ciphertext with the first key (MultiFernet.rotate keeps the original timestamp)."""
    try:
        return _key_ring().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored credential cannot be decrypted with any key in FERNET_KEYS; "
            "the key that encrypted it was removed from the ring."
        ) from exc


class EncryptedTextField(models.TextField):
    """A text column whose value is Fernet-encrypted in the database and plain in Python."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        return secret_decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return secret_encrypt(value)


class EncryptedJSONField(EncryptedTextField):
    """A JSON object kept as one Fernet token (so no key or value is readable in the database); ``{}`` is stored empty.

    A subclass of ``EncryptedTextField``, so the secret rotation job re-encrypts it like any other credential.
    """

    # django-stubs reads a field's Python type from these; the base declares str, this one holds a dict.
    _pyi_private_set_type: dict[str, Any]  # type: ignore[assignment]
    _pyi_private_get_type: dict[str, Any]  # type: ignore[assignment]

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        plaintext = super().from_db_value(value, expression, connection)
        return json.loads(plaintext) if plaintext else {}

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value else {}
            except ValueError:
                raise ValidationError("Must be a JSON object.", code="invalid") from None
        return {} if value is None else value

    def validate(self, value: Any, model_instance: models.Model | None) -> None:
        super().validate(value, model_instance)
        if not isinstance(value, dict):
            raise ValidationError("Must be a JSON object.", code="invalid")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"Must hold JSON values only ({exc}).", code="invalid") from None

    def get_prep_value(self, value: Any) -> Any:
        if not value:
            return ""
        return secret_encrypt(json.dumps(value, separators=(",", ":")))

    def value_to_string(self, obj: models.Model) -> str:
        return json.dumps(self.value_from_object(obj), sort_keys=True)
