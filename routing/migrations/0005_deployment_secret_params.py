"""Credential-like litellm params move out of the plain extra_params into the encrypted secret_params."""

from django.db import migrations

import tenants.vault
from routing.credentials import params_merge, params_split


def secrets_encrypt(apps, schema_editor):
    """Every credential left in extra_params (aws_secret_access_key, an api-key header ...) goes to secret_params."""
    ModelDeployment = apps.get_model("routing", "ModelDeployment")
    for deployment in ModelDeployment.objects.order_by("pk").iterator(chunk_size=500):
        if not isinstance(deployment.extra_params, dict):
            continue
        plain, secret = params_split(deployment.extra_params)
        if secret:
            deployment.extra_params = plain
            deployment.secret_params = params_merge(deployment.secret_params or {}, secret)
            deployment.save(update_fields=["extra_params", "secret_params"])


def secrets_decrypt(apps, schema_editor):
    """Back to the old layout: the secret params rejoin extra_params in plain text (the column then goes)."""
    ModelDeployment = apps.get_model("routing", "ModelDeployment")
    for deployment in ModelDeployment.objects.order_by("pk").iterator(chunk_size=500):
        if deployment.secret_params:
            extra = deployment.extra_params if isinstance(deployment.extra_params, dict) else {}
            deployment.extra_params = params_merge(extra, deployment.secret_params)
            deployment.secret_params = {}
            deployment.save(update_fields=["extra_params", "secret_params"])


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0004_ml_router'),
    ]

    operations = [
        migrations.AddField(
            model_name='modeldeployment',
            name='secret_params',
            field=tenants.vault.EncryptedJSONField(blank=True, default=dict, help_text='Credential litellm_params, as one encrypted JSON object.'),
        ),
        migrations.RunPython(secrets_encrypt, secrets_decrypt, elidable=True),
    ]
