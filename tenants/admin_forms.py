"""Admin form pieces shared by the apps: a write-only secret field that keeps its stored value when left blank,
and a JSON field that refuses what PostgreSQL cannot store."""

from __future__ import annotations

from typing import Any

from django import forms


class WriteOnlySecretField(forms.CharField):
    """A secret the admin accepts but never shows back (the page source holds no trace of it).

    Used with ``WriteOnlySecretForm``: left blank, the stored value is kept; the form's
    ``clear_<name>`` checkbox (a ``ClearSecretField``) removes it.
    """

    def __init__(self, *, help_text: str, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget", forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "size": 60})
        )
        self.new_help_text = help_text  # on a new object there is no current one to keep
        super().__init__(required=False, help_text=f"{help_text} Leave blank to keep the current one.", **kwargs)


class ClearSecretField(forms.BooleanField):
    """The checkbox that removes a stored secret (named ``clear_<secret field>``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "Remove the stored credential.")
        super().__init__(required=False, **kwargs)


class WriteOnlySecretForm(forms.ModelForm):
    """A model form whose ``WriteOnlySecretField`` fields keep, replace or clear the stored secret.

    After ``clean``, ``changed_secrets`` names the secrets that were replaced or cleared,
    so the service can audit "(changed)" without ever seeing the old value in the form.
    """

    changed_secrets: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if not isinstance(field, WriteOnlySecretField):
                continue
            if self.instance.pk is None:
                # Nothing stored yet: nothing to keep, nothing to remove.
                field.help_text = field.new_help_text
                clear = self.fields.get(f"clear_{name}")
                if clear is not None:
                    clear.widget = forms.HiddenInput()
            if self.is_bound:
                # A form sent back with errors keeps what was just typed (never the stored secret:
                # an unbound form shows nothing, and a blank field keeps the stored one).
                assert isinstance(field.widget, forms.PasswordInput)
                field.widget.render_value = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        self.changed_secrets = set()
        for name, field in self.fields.items():
            if not isinstance(field, WriteOnlySecretField):
                continue
            if cleaned.get(f"clear_{name}"):
                cleaned[name] = ""
                self.changed_secrets.add(name)
            elif cleaned.get(name):
                self.changed_secrets.add(name)
            elif self.instance.pk:
                stored = type(self.instance)._default_manager.get(pk=self.instance.pk)
                cleaned[name] = getattr(stored, name)
        return cleaned


def holds_nul(value: Any) -> bool:
    """Does this decoded JSON hold a NUL character in any string, key or value?"""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False


class JsonWithoutNulField(forms.JSONField):
    """JSON edited in the admin: ``\\u0000`` is a form error (PostgreSQL's jsonb refuses it with a database error)."""

    def to_python(self, value: Any) -> Any:
        converted = super().to_python(value)
        if holds_nul(converted):
            raise forms.ValidationError(
                "JSON here cannot hold the NUL character (\\u0000).", code="null_characters_not_allowed"
            )
        return converted
