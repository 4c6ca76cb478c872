"""Forms of the deployment admin: JSON typed safely, credentials write-only and never shown again."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.forms.fields import InvalidJSONInput
from django.http import QueryDict

from core.errors import InvalidRequest
from routing.credentials import params_merge, params_split, secret_values
from routing.models import ModelDeployment, url_credentials, url_without_credentials
from tenants.admin_forms import ClearSecretField, WriteOnlySecretField, WriteOnlySecretForm
from tenants.request_input import json_body_parse


def _json_parse(text: str) -> Any:
    """JSON typed into the admin, read as the API reads bodies (depth limit, no lone surrogates)."""
    try:
        document = json_body_parse(text.encode("utf-8", "surrogatepass"))
    except InvalidRequest as exc:
        # The reader's messages speak of a request body; here it is what was typed into a field.
        message = "Enter valid JSON." if exc.message.startswith("We could not parse") else exc.message
        raise forms.ValidationError(message.replace("JSON body", "JSON"), code="invalid") from None
    return document


class JSONTextField(forms.JSONField):
    """The admin's JSON textarea: malformed, too deep or unencodable JSON is a form error, never a server error."""

    def to_python(self, value: Any) -> Any:
        if self.disabled or not isinstance(value, str):
            return super().to_python(value)
        if value.strip() in ("", "null"):
            return None
        return _json_parse(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or not isinstance(data, str):
            return super().bound_data(data, initial)
        try:
            return _json_parse(data)
        except forms.ValidationError:
            return InvalidJSONInput(data)


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never shows a value: what is stored, or was typed, is not in the page."""

    def format_value(self, value: Any) -> None:
        return None


class SecretParamsField(forms.Field):
    """Credential params to set or remove: a JSON object merged into the stored ones (null removes one)."""

    widget = WriteOnlyTextarea(attrs={"rows": 4, "cols": 60, "autocomplete": "off", "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "Credential litellm_params, encrypted at rest and never shown again: a JSON object such as "
            '{"aws_secret_access_key": "…", "extra_headers": {"api-key": "…"}}. The names given replace the '
            "stored ones, null removes one, the others are kept. Leave blank to keep them all.",
        )
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if not value or not str(value).strip():
            return {}
        document = _json_parse(str(value))
        if not isinstance(document, dict):
            raise forms.ValidationError("Secret params must be a JSON object of names and values.", code="invalid")
        return document

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data and str(data).strip())


class ModelDeploymentForm(WriteOnlySecretForm):
    api_key = WriteOnlySecretField(help_text="Provider credential, encrypted at rest.")
    clear_api_key = ClearSecretField()
    extra_params = JSONTextField(
        required=False,
        help_text="Other litellm_params, as a JSON object. Credentials go in Secret params, not here.",
    )
    secret_params = SecretParamsField()
    clear_secret_params = ClearSecretField(help_text="Remove every stored secret param.")

    class Meta:
        model = ModelDeployment
        fields = ["model_name", "litellm_model", "api_base", "api_key", "extra_params", "secret_params", "enabled"]

    def clean_litellm_model(self) -> str:
        value = self.cleaned_data["litellm_model"].strip()
        if "/" not in value:
            raise forms.ValidationError("Use litellm's <provider>/<model> form, e.g. openai/gpt-4o-mini.")
        return value

    def _show_instead(self, name: str, text: str) -> None:
        """Re-render field ``name`` with ``text`` instead of what was typed (which held a credential)."""
        data = self.data.copy() if isinstance(self.data, QueryDict) else dict(self.data)
        data[self.add_prefix(name)] = text
        self.data = data

    def clean_api_base(self) -> str:
        value = self.cleaned_data.get("api_base") or ""
        found = url_credentials(value)
        if found:
            self._show_instead("api_base", url_without_credentials(value))
            raise forms.ValidationError(
                f"The URL carries a credential ({found}); it was taken out and nothing was saved. Put it in "
                'API key, or as a header in Secret params (e.g. {"extra_headers": {"Authorization": "…"}}).',
                code="credential",
            )
        return value

    def clean_extra_params(self) -> Any:
        value = self.cleaned_data.get("extra_params")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Extra params must be a JSON object.")
        plain, secret = params_split(value)
        if secret:
            # Refused rather than moved: this field is plain text, shown again with any form error, so a
            # credential typed here would be rendered back (and silently dropped if the form then failed).
            # The page shows the field without them, and says where they go.
            self._show_instead("extra_params", json.dumps(plain, indent=2))
            names = sorted(secret_values(secret))
            where = "Secret params" if names != ["api_key"] else "API key"
            raise forms.ValidationError(
                f"{', '.join(names)}: credentials are not kept in plain text. Enter them in {where} "
                "(write-only, encrypted at rest); they were taken out of this field and nothing was saved.",
                code="credential",
            )
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        changes = cleaned.get("secret_params") or {}
        # The instance is the stored row until the form is saved (construct_instance runs after clean).
        stored = {} if cleaned.get("clear_secret_params") else self.instance.secret_params or {}
        merged = params_merge(stored, changes)
        cleaned["secret_params"] = merged
        # construct_instance skips a defaulted field whose input is missing and whose value is empty,
        # which would make "clear" a no-op; set it here so the merged value always applies.
        self.instance.secret_params = merged
        return cleaned
