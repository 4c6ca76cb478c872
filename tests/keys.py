"""An issued API key with its secret, as the key fixtures hand it out."""

from __future__ import annotations

from dataclasses import dataclass

from tenants.models import ApiKey


@dataclass
class Issued:
    key: ApiKey
    secret: str
