"""The API key admin's form: model names as text, and only the scopes the acting user may grant."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils import timezone

from tenants import services
from tenants.models import KEY_SCOPES, ApiKey
from tenants.roles import is_platform_admin, scopes_grantable

KEY_EDITABLE_FIELDS = ["allowed_models", "scopes", "expires_at", "max_age_days"]


class ModelNamesField(forms.CharField):
    """A JSON list of model names, edited as comma-separated text."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]  # the field holds a list
        text = super().to_python(value) or ""
        names = [name.strip() for name in text.split(",") if name.strip()]
        for name in names:
            if len(name) > 200:
                raise forms.ValidationError("A model name is at most 200 characters.")
            if "\x00" in name:
                raise forms.ValidationError("A model name cannot hold the NUL character.")
        return list(dict.fromkeys(names))


class ApiKeyForm(forms.ModelForm):
    acting_user: Any = None  # set per request by ApiKeyAdmin.get_form

    allowed_models = ModelNamesField(
        required=False,
        help_text="Comma-separated public model names this key may use; leave empty to allow every model.",
        widget=forms.TextInput(attrs={"size": 80}),
    )

    scopes = forms.MultipleChoiceField(
        required=False,
        choices=[(scope, scope) for scope in KEY_SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Endpoints this key may call; none ticked means all but audit.",
    )

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", *KEY_EDITABLE_FIELDS]
        help_texts = {
            "tenant": "Every key is bound by its tenant's quotas; a tenant admin can add tighter limits for one key.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        scopes = self.fields.get("scopes")
        if isinstance(scopes, forms.MultipleChoiceField):
            # Offer only what this person may grant somewhere, plus what the key already has
            # (so saving it does not silently drop a scope someone else granted).
            offered = set(self._grantable(self.instance.tenant_id if self.instance.pk else None))
            offered |= set(self.instance.scopes or ())
            scopes.choices = [(scope, scope) for scope in KEY_SCOPES if scope in offered]

    def _grantable(self, tenant_id: int | None) -> tuple[str, ...]:
        """In the key's tenant, or (a new key) in any tenant this person may add keys to."""
        if tenant_id is not None or is_platform_admin(self.acting_user):
            return scopes_grantable(self.acting_user, tenant_id)
        tenants = getattr(self.fields.get("tenant"), "queryset", None)
        tenant_ids = tenants.values_list("pk", flat=True) if tenants is not None else ()
        return tuple({scope for tenant in tenant_ids for scope in scopes_grantable(self.acting_user, tenant)})

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and self.instance.pk is None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        tenant = cleaned.get("tenant") if self.instance.pk is None else self.instance.tenant
        if tenant is not None and "scopes" in cleaned:
            refused = services.api_key_scopes_refused(
                acting_user=self.acting_user,
                tenant_id=tenant.pk,
                scopes=cleaned["scopes"],
                before=ApiKey.objects.get(pk=self.instance.pk).scopes if self.instance.pk else (),
            )
            if refused:
                self.add_error(
                    "scopes",
                    f"You may not give a key of {tenant.slug} the scope(s) {', '.join(refused)}: a key may only read "
                    "what you may see yourself.",
                )
        return cleaned
